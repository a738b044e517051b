"""Region (J) and boundary (F) measures, with the definitions of the official DAVIS 2017
evaluation (davisvideochallenge/davis2017-evaluation, ``davis2017/metrics.py`` and
``utils.db_statistics``), re-implemented here.

J (region similarity) for binary masks G (ground truth), P (prediction), void V::

    J = |(P & G) \\ V| / |(P | G) \\ V|,   J = 1 when the union is empty.

F (boundary F-measure): boundary maps B(.) by :func:`seg2bmap` of the masks with void removed,
a disk of radius r = ceil(0.008 * sqrt(H^2 + W^2)) (``bound_th`` >= 1 is taken as the radius
itself) as structuring element, D(.) the dilation of a boundary map by that disk::

    precision = |B(P) & D(B(G))| / |B(P)|,   recall = |B(G) & D(B(P))| / |B(G)|,
    F = 2 * precision * recall / (precision + recall)   (0 when both are 0)

with the empty-boundary conventions: no predicted and some true boundary -> (1, 0); some
predicted and no true boundary -> (0, 1); neither -> (1, 1).

Statistics of a per-frame series v (:func:`db_statistics`): mean = nanmean(v),
recall = nanmean(v > 0.5), decay = nanmean(first quarter) - nanmean(last quarter) with the
quarters' bounds round(linspace(1, len(v), 5)) - 1 (inclusive on both ends, as the official code).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

BOUNDARY_THRESHOLD = 0.008


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Binary mask (H, W) -> one-pixel-wide boundary map (H, W) bool.

    A pixel is on the boundary when it differs from its east, south or south-east neighbour
    (pixels past the border count as 0 for those comparisons, except on the last row, which
    compares with its east neighbour only, and the last column, which compares with its south
    neighbour only); the bottom-right corner is never a boundary. This is David Martin's
    seg2bmap at full resolution, the boundary offset half a pixel towards the origin.
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap: expected an (H, W) mask, got shape {seg.shape}")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    boundary = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    boundary[-1, :] = seg[-1, :] ^ east[-1, :]
    boundary[:, -1] = seg[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def boundary_radius(shape: tuple[int, int], bound_th: float = BOUNDARY_THRESHOLD) -> int:
    """Tolerance radius in pixels: bound_th if >= 1, else ceil(bound_th * image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 disk: 1 where x^2 + y^2 <= r^2 (scikit-image's ``disk``)."""
    coords = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(coords, coords)
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def dilate(binary: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Binary dilation of an (H, W) map by a centred kernel (outside the image counts as 0)."""
    from ..data.frames import _import_cv2

    cv2 = _import_cv2()
    return cv2.dilate(binary.astype(np.uint8), kernel) > 0


def _void_or_none(void: np.ndarray | None, shape) -> np.ndarray:
    if void is None:
        return np.zeros(shape, dtype=bool)
    void = np.asarray(void).astype(bool)
    if void.shape != tuple(shape):
        raise ValueError(f"void mask shape {void.shape} does not match the masks' {tuple(shape)}")
    return void


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt).astype(bool), np.asarray(pred).astype(bool)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    return gt, pred


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity J of two (H, W) binary masks; 1.0 when both are empty (outside void)."""
    gt, pred = _check_pair(gt, pred)
    keep = ~_void_or_none(void, gt.shape)
    inter = np.count_nonzero(gt & pred & keep)
    union = np.count_nonzero((gt | pred) & keep)
    return 1.0 if union == 0 else inter / union


def boundary_precision_recall(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
                              bound_th: float = BOUNDARY_THRESHOLD) -> tuple[float, float]:
    """Boundary (precision, recall) of ``pred`` against ``gt`` (see the module docstring)."""
    gt, pred = _check_pair(gt, pred)
    keep = ~_void_or_none(void, gt.shape)
    pred_boundary = seg2bmap(pred & keep)
    gt_boundary = seg2bmap(gt & keep)
    kernel = disk(boundary_radius(gt.shape, bound_th))
    n_pred = np.count_nonzero(pred_boundary)
    n_gt = np.count_nonzero(gt_boundary)
    if n_pred == 0 and n_gt > 0:
        return 1.0, 0.0
    if n_pred > 0 and n_gt == 0:
        return 0.0, 1.0
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0
    precision = np.count_nonzero(pred_boundary & dilate(gt_boundary, kernel)) / n_pred
    recall = np.count_nonzero(gt_boundary & dilate(pred_boundary, kernel)) / n_gt
    return precision, recall


def f_measure(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
              bound_th: float = BOUNDARY_THRESHOLD) -> float:
    """Boundary F-measure of two (H, W) binary masks."""
    precision, recall = boundary_precision_recall(gt, pred, void, bound_th)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def db_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of a per-frame series, as the official ``db_statistics``.

    The official code casts the quarter bounds to uint8, which wraps for series longer than
    256 frames; here they are plain integers (identical up to 256 frames).
    """
    values = np.asarray(per_frame, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values)) if values.size else float("nan")
        recall = float(np.nanmean(values > 0.5)) if values.size else float("nan")
        bounds = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
        bins = [values[bounds[i]:bounds[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3])) if values.size else float("nan")
    return mean, recall, decay
