"""Frame sources, the DAVIS layout, palette masks: formats, streaming and errors."""
import numpy as np
import pytest
from PIL import Image

from tests.conftest import require_shared
from vos_models.data import (DAVIS_PALETTE, DataError, DavisLayout, ImageFolderSource, VideoFileSource, VideoWriter,
                             open_frames, read_mask, write_mask)


def make_frames(folder, count=4, size=(24, 32), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        frame = (rng.random((*size, 3)) * 255).astype(np.uint8)
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
        frames.append(frame)
    return frames


def test_palette_png_roundtrip_and_palette(tmp_path):
    labels = np.zeros((5, 7), np.uint8)
    labels[1:3, 2:5] = 2
    labels[4, :] = 255
    path = write_mask(tmp_path / "m.png", labels)
    with Image.open(path) as image:
        assert image.mode == "P"
        palette = np.array(image.getpalette()[:768]).reshape(256, 3)
    assert np.array_equal(read_mask(path), labels)
    assert tuple(DAVIS_PALETTE[1]) == (128, 0, 0) and tuple(DAVIS_PALETTE[2]) == (0, 128, 0)
    assert tuple(DAVIS_PALETTE[3]) == (128, 128, 0) and tuple(DAVIS_PALETTE[255]) == (224, 224, 192)
    assert np.array_equal(palette, DAVIS_PALETTE)
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_davis_palette_matches_the_sample():
    path = require_shared("data", "davis-sample", "Annotations", "480p", "blackswan", "00000.png")
    with Image.open(path) as image:
        assert np.array_equal(np.array(image.getpalette()[:768]).reshape(256, 3), DAVIS_PALETTE)


def test_mask_errors(tmp_path):
    Image.fromarray(np.full((4, 4, 3), (10, 20, 30), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"colour\(s\) such as \(10, 20, 30\) are not DAVIS palette colours"):
        read_mask(tmp_path / "rgb.png")
    Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "grey.png")
    assert read_mask(tmp_path / "grey.png").max() == 1  # 'L' ids are accepted
    with pytest.raises(DataError, match="is 4x4 \\(WxH\\) but the frames are 5x4"):
        read_mask(tmp_path / "grey.png", expected_size=(4, 5))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="cannot read mask"):
        read_mask(tmp_path / "bad.png")
    with pytest.raises(DataError, match="mask not found"):
        read_mask(tmp_path / "absent.png")


def test_image_folder_streams_in_natural_order_and_reports_corrupt_frames(tmp_path):
    frames = make_frames(tmp_path / "seq", 3)
    (tmp_path / "seq" / "00000.png").rename(tmp_path / "seq" / "frame2.png")
    (tmp_path / "seq" / "00001.png").rename(tmp_path / "seq" / "frame10.png")
    source = ImageFolderSource(tmp_path / "seq")
    assert source.names == ["00002", "frame2", "frame10"] and source.size == (24, 32)
    got = list(source)
    assert np.array_equal(got[1][1], frames[0]) and np.array_equal(got[2][1], frames[1])
    # a truncated JPEG fails with the file named
    Image.fromarray(frames[0]).save(tmp_path / "seq" / "frame11.jpg", quality=90)
    data = (tmp_path / "seq" / "frame11.jpg").read_bytes()
    (tmp_path / "seq" / "frame11.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or unreadable frame .*frame11.jpg"):
        list(ImageFolderSource(tmp_path / "seq"))
    with pytest.raises(DataError, match="frame folder not found"):
        ImageFolderSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image frames"):
        ImageFolderSource(tmp_path / "empty")


def test_video_file_roundtrip_and_errors(tmp_path):
    # smooth frames (codecs blur noise), with a different dominant colour per frame to catch
    # a BGR/RGB mix-up
    yy, xx = np.mgrid[0:48, 0:64]
    frames = []
    for i in range(5):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., i % 3] = 200
        frame[..., (i + 1) % 3] = (xx * 3).astype(np.uint8)
        frames.append(frame)
    (tmp_path / "seq").mkdir()
    writer = VideoWriter(tmp_path / "clip.mp4", 10, (48, 64))
    for frame in frames:
        writer.write(frame)
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "seq"]  # temp file renamed away
    source = open_frames(tmp_path / "clip.mp4")
    assert isinstance(source, VideoFileSource) and source.size == (48, 64) and source.fps == pytest.approx(10)
    decoded = list(source)
    assert [n for n, _ in decoded] == ["00000", "00001", "00002", "00003", "00004"]
    # lossy codec: close to the originals, channels in RGB order
    for (_, d), f in zip(decoded, frames):
        assert np.abs(d.astype(int) - f).mean() < 12
        assert np.argmax(d.reshape(-1, 3).mean(0)) == np.argmax(f.reshape(-1, 3).mean(0))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="cannot be opened|holds no frames"):
        open_frames(tmp_path / "empty.mp4")
    with pytest.raises(DataError, match="input not found"):
        open_frames(tmp_path / "absent.mp4")


def test_davis_layout_with_sparse_annotations():
    root = require_shared("data", "davis-sample")
    layout = DavisLayout(root)
    assert set(layout.sequences()) == {"blackswan", "caps", "chair", "dog"}
    assert layout.sequences("val") == ["blackswan", "dog", "chair"]
    caps = layout.annotation_paths("caps")
    assert list(caps) == ["00000", "00014", "00033", "00043", "00066"]
    frames = layout.frames("caps")
    assert len(frames) == 87 and frames.size == (853, 480)
    first = read_mask(caps["00033"], frames.size)
    assert set(np.unique(first)) == {0, 1, 2}



def test_masks_as_users_have_them(tmp_path):
    """Palette PNG -> ids; grayscale or binary 0/255 (or 0/1) -> one object; RGB in DAVIS colours ->
    ids through the palette; black-and-white RGB -> one object (issue 18, item 2)."""
    ids = np.zeros((6, 8), np.uint8)
    ids[1:3, 1:4], ids[4:6, 5:8], ids[0, 7] = 1, 3, 255
    palette = Image.fromarray(ids, mode="P")
    palette.putpalette(DAVIS_PALETTE.reshape(-1).tolist())
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_mask(tmp_path / "palette.png"), ids)
    Image.fromarray(DAVIS_PALETTE[ids]).save(tmp_path / "rgb.png")
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), ids)
    Image.fromarray(np.dstack([DAVIS_PALETTE[ids], np.full(ids.shape, 255, np.uint8)])).save(tmp_path / "rgba.png")
    assert np.array_equal(read_mask(tmp_path / "rgba.png"), ids)
    one = (ids == 1)
    for name, array in (("gray255.png", one.astype(np.uint8) * 255), ("gray01.png", one.astype(np.uint8)),
                        ("bits.png", one), ("bw.png", np.dstack([one.astype(np.uint8) * 255] * 3))):
        Image.fromarray(array).save(tmp_path / name)
        assert np.array_equal(read_mask(tmp_path / name), one.astype(np.uint8)), name
