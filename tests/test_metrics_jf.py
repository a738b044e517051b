"""J&F against hand-derived values and against an independent numpy-only implementation
(shift-and-OR disk dilation, loop-based and padding-based boundary maps), on random masks and
on the real DAVIS sample."""
import math

import numpy as np
import pytest

from tests.conftest import require_shared
from vos_models.data import read_mask, write_mask
from vos_models.metrics import (boundary_radius, db_statistics, disk, evaluate_folders, evaluate_sequence, f_measure,
                                jaccard, seg2bmap)


# ---------------------------------------------------------------- independent reference
def shift(mask, dy, dx):
    """mask moved by (dy, dx), zeros shifted in."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = mask[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def dilate_by_disk(mask, r):
    """Union of the mask shifted by every (dy, dx) with dy^2 + dx^2 <= r^2 (numpy only)."""
    out = np.zeros_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r:
                out |= shift(mask, dy, dx)
    return out


def grow(mask, k):
    """k steps of 4-neighbour dilation."""
    for _ in range(k):
        mask = mask | shift(mask, 1, 0) | shift(mask, -1, 0) | shift(mask, 0, 1) | shift(mask, 0, -1)
    return mask


def bmap_loops(seg):
    """Boundary map written from the definition, pixel by pixel."""
    seg = seg.astype(bool)
    h, w = seg.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            east = seg[y, x + 1] if x + 1 < w else False
            south = seg[y + 1, x] if y + 1 < h else False
            se = seg[y + 1, x + 1] if (y + 1 < h and x + 1 < w) else False
            if y == h - 1 and x == w - 1:
                out[y, x] = False
            elif y == h - 1:
                out[y, x] = seg[y, x] != east
            elif x == w - 1:
                out[y, x] = seg[y, x] != south
            else:
                out[y, x] = seg[y, x] != east or seg[y, x] != south or seg[y, x] != se
    return out


def bmap_padded(seg):
    """Vectorised boundary map via zero padding (for full-size frames)."""
    s = np.pad(seg.astype(bool), ((0, 1), (0, 1)))
    core = s[:-1, :-1]
    b = (core != s[:-1, 1:]) | (core != s[1:, :-1]) | (core != s[1:, 1:])
    b[-1, :] = core[-1, :] != s[-2, 1:]
    b[:, -1] = core[:, -1] != s[1:, -2]
    b[-1, -1] = False
    return b


def reference_jf(gt, pred, void=None, bmap=bmap_padded):
    keep = np.ones(gt.shape, bool) if void is None else ~void
    gt, pred = gt.astype(bool), pred.astype(bool)
    union = ((gt | pred) & keep).sum()
    j = 1.0 if union == 0 else ((gt & pred) & keep).sum() / union
    r = math.ceil(0.008 * math.sqrt(gt.shape[0] ** 2 + gt.shape[1] ** 2))
    bp, bg = bmap(pred & keep), bmap(gt & keep)
    npd, ngt = bp.sum(), bg.sum()
    if npd == 0 and ngt == 0:
        p, rc = 1.0, 1.0
    elif npd == 0:
        p, rc = 1.0, 0.0
    elif ngt == 0:
        p, rc = 0.0, 1.0
    else:
        p = (bp & dilate_by_disk(bg, r)).sum() / npd
        rc = (bg & dilate_by_disk(bp, r)).sum() / ngt
    f = 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)
    return j, f


# ---------------------------------------------------------------- hand-derived cases
def square(h, w, y0, x0, size):
    m = np.zeros((h, w), bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


def test_seg2bmap_of_a_square_by_hand():
    # 4x4 square at rows/cols 2..5 of 10x10: inside boundary = last row + last column of the
    # square (7 px); outside = the column left of it, the row above it and their corner (9 px).
    b = seg2bmap(square(10, 10, 2, 2, 4))
    assert b.sum() == 16
    assert b[5, 2:6].all() and b[2:6, 5].all() and b[1, 1:6].all() and b[1:6, 1].all()
    assert not b[2:5, 2:5].any()
    # a mask touching the bottom-right corner: last row/column rules and corner never set
    full = np.ones((3, 4), bool)
    assert not seg2bmap(full).any()
    rng = np.random.default_rng(0)
    for _ in range(20):
        seg = rng.random((7, 9)) > 0.5
        assert np.array_equal(seg2bmap(seg), bmap_loops(seg))


def test_radius_and_disk():
    assert boundary_radius((480, 854)) == 8     # DAVIS 480p: ceil(7.837)
    assert boundary_radius((480, 853)) == 8     # caps (portrait 853x480 -> same diagonal)
    assert boundary_radius((480, 720)) == 7     # chair: ceil(6.92)
    assert boundary_radius((10, 10)) == 1
    assert boundary_radius((10, 10), bound_th=3) == 3
    d = disk(2)
    assert d.shape == (5, 5) and d.sum() == 13  # x^2 + y^2 <= 4: 1 + 4 + 8 lattice points
    assert d[0, 2] == 1 and d[0, 1] == 0


def test_hand_checked_j_and_f():
    gt = square(12, 12, 1, 1, 4)
    assert jaccard(gt, gt) == 1.0 and f_measure(gt, gt) == 1.0
    # pred = gt plus a disjoint copy far away: J = 16 / 32; boundaries: 16 of 32 predicted
    # boundary pixels match -> precision 1/2, recall 1 -> F = 2/3 (radius 1 on a 12x12 image).
    pred = gt | square(12, 12, 7, 7, 4)
    assert jaccard(gt, pred) == pytest.approx(0.5, abs=1e-12)
    assert f_measure(gt, pred) == pytest.approx(2 / 3, abs=1e-12)
    # shifted by one pixel: J = 12 / 20; every boundary pixel within radius 1 -> F = 1
    shifted = square(12, 12, 1, 2, 4)
    assert jaccard(gt, shifted) == pytest.approx(12 / 20)
    assert f_measure(gt, shifted) == 1.0
    # empty conventions
    empty = np.zeros_like(gt)
    assert jaccard(empty, empty) == 1.0 and f_measure(empty, empty) == 1.0
    assert jaccard(gt, empty) == 0.0 and f_measure(gt, empty) == 0.0   # precision 1, recall 0
    assert f_measure(empty, gt) == 0.0                                   # precision 0, recall 1
    # void pixels leave both measures: a prediction wrong only inside void scores 1
    void = square(12, 12, 7, 7, 4)
    assert jaccard(gt, pred, void) == 1.0 and f_measure(gt, pred, void) == 1.0


def test_db_statistics_by_hand():
    v = np.array([1.0, 0.9, 0.8, 0.4, 0.3, 0.2, 0.1, 0.0])
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(v.mean())
    assert recall == pytest.approx(3 / 8)
    # bounds round(linspace(1, 8, 5) + 1e-10) - 1: linspace = [1, 2.75, 4.5, 6.25, 8], the 1e-10
    # pushes 4.5 up -> [1, 3, 5, 6, 8] - 1 = [0, 2, 4, 5, 7]; first bin v[0:3], last bin v[5:8]
    assert decay == pytest.approx(np.mean(v[0:3]) - np.mean(v[5:8]))
    assert decay == pytest.approx(0.9 - 0.1)
    m, r, d = db_statistics(np.array([0.7]))
    assert (m, r, d) == (0.7, 1.0, 0.0)


def test_matches_independent_reference_on_random_masks():
    rng = np.random.default_rng(1)
    for trial in range(30):
        h, w = rng.integers(5, 60, size=2)
        gt = rng.random((h, w)) > 0.5
        pred = grow(gt, 1) if trial % 3 else rng.random((h, w)) > 0.6
        void = (rng.random((h, w)) > 0.9) if trial % 2 else None
        j, f = reference_jf(gt, pred, void, bmap=bmap_loops if h * w < 900 else bmap_padded)
        assert jaccard(gt, pred, void) == pytest.approx(j, abs=1e-12)
        assert f_measure(gt, pred, void) == pytest.approx(f, abs=1e-12)


# ---------------------------------------------------------------- real sequences
def _perturbed_predictions(gt_seq, seed):
    """Plausible predictions: the previous frame's mask (a copy-previous tracker), eroded or
    dilated at random, with an occasional missing object."""
    rng = np.random.default_rng(seed)
    names = sorted(gt_seq)
    preds = {}
    for i, name in enumerate(names):
        labels = gt_seq[names[max(i - 1, 0)]].copy()
        labels[labels == 255] = 0
        out = np.zeros_like(labels)
        for obj in np.unique(labels)[1:]:
            m = labels == obj
            k = int(rng.integers(0, 4))
            m = grow(m, k) if rng.random() < 0.5 else ~grow(~m, k)  # dilate or erode by k
            if rng.random() < 0.05:
                m[:] = False
            out[m & (out == 0)] = obj
        preds[name] = out
    return preds


@pytest.mark.parametrize("sequence", ["blackswan", "dog", "chair"])
def test_real_sequence_matches_independent_reference(sequence):
    root = require_shared("data", "davis-sample")
    folder = root / "Annotations" / "480p" / sequence
    gt = {p.stem: read_mask(p) for p in sorted(folder.glob("*.png"))[::3]}  # every 3rd frame: keep it quick
    names = sorted(gt)
    preds = _perturbed_predictions(gt, seed=len(sequence))
    scores = evaluate_sequence(sequence, gt, preds, names)
    assert len(scores) == 1 and scores[0].frames == names[1:-1]
    j_ref = [reference_jf(gt[n] == 1, preds[n] == 1)[0] for n in names[1:-1]]
    f_ref = [reference_jf(gt[n] == 1, preds[n] == 1)[1] for n in names[1:-1]]
    assert np.allclose(scores[0].j_per_frame, j_ref, atol=1e-12)
    assert np.allclose(scores[0].f_per_frame, f_ref, atol=1e-12)
    assert scores[0].j_mean == pytest.approx(np.mean(j_ref), abs=1e-4)
    assert scores[0].f_mean == pytest.approx(np.mean(f_ref), abs=1e-4)
    assert 0.2 < scores[0].j_mean < 0.99  # the perturbations really cost something


def test_sparse_multi_object_caps_and_folder_evaluation(tmp_path):
    root = require_shared("data", "davis-sample")
    gt = {p.stem: read_mask(p) for p in (root / "Annotations" / "480p" / "caps").glob("*.png")}
    assert sorted(gt) == ["00000", "00014", "00033", "00043", "00066"]
    preds = _perturbed_predictions(gt, seed=3)
    pred_dir = tmp_path / "pred" / "caps"
    pred_dir.mkdir(parents=True)
    for name, labels in preds.items():
        write_mask(pred_dir / f"{name}.png", labels)
    result = evaluate_folders(root, tmp_path / "pred", ["caps"])
    by_id = {o.object_id: o for o in result.objects}
    # object 1 from frame 00000: scored on 00014, 00033, 00043, 00066; object 2 first given on 00033
    assert by_id[1].frames == ["00014", "00033", "00043", "00066"]
    assert by_id[2].frames == ["00043", "00066"]
    for obj, score in by_id.items():
        ref = [reference_jf(gt[n] == obj, preds[n] == obj) for n in score.frames]
        assert np.allclose(score.j_per_frame, [r[0] for r in ref]) and np.allclose(score.f_per_frame, [r[1] for r in ref])
    g = result.global_scores
    assert g["J-Mean"] == pytest.approx(np.mean([o.j_mean for o in result.objects]))
    assert g["J&F-Mean"] == pytest.approx((g["J-Mean"] + g["F-Mean"]) / 2)
    assert "caps_2" in result.csv_text() and "caps_1" in result.markdown()


def test_void_modes():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:8, 2:8] = 1
    gt[10:14, 10:14] = 255
    pred = gt.copy()
    pred[pred == 255] = 1  # prediction claims the void region
    names = ["a", "b", "c"]
    gts = {n: gt for n in names}
    preds = {n: pred for n in names}
    official = evaluate_sequence("s", gts, preds, names)[0]
    ignore = evaluate_sequence("s", gts, preds, names, void="ignore")[0]
    assert official.j_mean == pytest.approx(36 / 52)  # void counted as background (official code)
    assert ignore.j_mean == 1.0 and ignore.f_mean == 1.0
