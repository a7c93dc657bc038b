"""Walking, decoding (corrupt kinds, EXIF, modes, pixel limit) and the decode cache."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sustain.data import decode_cache, scan, walk
from sustain.data.decode_cache import DecodeCache, cached_result
from sustain.data.scan import CorruptImage, decode_file, decode_files, load_rgb
from sustain.data.split import SIGNATURE
from sustain.data.walk import walk_source


def smooth_rgb(seed: int, size: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------- corrupt kinds


@pytest.fixture
def corrupt_dir(tmp_path: Path) -> Path:
    jpeg = encoded(smooth_rgb(1, 64), "JPEG", quality=90)
    png = encoded(smooth_rgb(2, 64), "PNG")
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "truncated.png").write_bytes(png[: len(png) * 2 // 3])
    (tmp_path / "page.png").write_bytes(b"<html><body>404 Not Found</body></html>")
    Image.new("RGB", (120, 100), (9, 9, 9)).save(tmp_path / "huge.png")
    (tmp_path / "good.jpg").write_bytes(jpeg)
    return tmp_path


@pytest.mark.parametrize("name, kind", [
    ("zero.jpg", "zero bytes"), ("truncated.jpg", "truncated"), ("truncated.png", "truncated"),
    ("page.png", "not an image"), ("huge.png", "over the pixel limit"),
])
def test_each_corrupt_kind_has_its_reason(corrupt_dir: Path, name: str, kind: str) -> None:
    result = decode_file(str(corrupt_dir / name), max_pixels=10_000)
    assert not result.ok
    assert result.reason.startswith(kind)
    assert result.phash is None
    with pytest.raises(CorruptImage, match=f"^{kind}"):
        load_rgb(corrupt_dir / name, max_pixels=10_000)


def test_pixel_limit_reason_names_the_size_and_good_file_decodes(corrupt_dir: Path) -> None:
    huge = decode_file(str(corrupt_dir / "huge.png"), max_pixels=10_000)
    assert "120x100 = 12,000 pixels > 10,000" in huge.reason
    assert (huge.width, huge.height) == (120, 100)
    good = decode_file(str(corrupt_dir / "good.jpg"), max_pixels=10_000)
    assert good.ok and len(good.content_hash) == 64 and len(good.signature) == SIGNATURE.itemsize
    assert (good.width, good.height) == (64, 64)


def test_truncated_files_fail_even_if_pillow_was_told_to_accept_them(corrupt_dir: Path, monkeypatch) -> None:
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert decode_file(str(corrupt_dir / "truncated.jpg"), 10**8).reason.startswith("truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


# --------------------------------------------------------------------------- conversion


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise when displayed
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_rgb(tmp_path / "rot.jpg")
    assert out.size == (20, 40)
    r, g, b = out.getpixel((10, 2))  # the left edge is now the top
    assert b > 200 and r < 60


def test_modes_become_8bit_rgb(tmp_path: Path) -> None:
    grey16 = Image.fromarray(np.array([[0, 256 * 128, 65535]], dtype=np.uint16))
    assert grey16.mode == "I;16"
    out = load_rgb(encoded(grey16, "PNG"))
    assert out.mode == "RGB"
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]  # rescaled, not clipped at 255

    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black
    out = load_rgb(encoded(rgba, "PNG"))
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    out = load_rgb(encoded(palette, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 255, 0)

    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red
    r, g, b = load_rgb(encoded(cmyk, "JPEG", quality=95)).getpixel((1, 1))
    assert r > 200 and g < 50 and b < 50

    for mode in ("L", "1", "LA"):
        assert load_rgb(encoded(Image.new(mode, (3, 3)), "PNG")).mode == "RGB"


# --------------------------------------------------------------------------- walking


def test_walk_is_sorted_whatever_the_listing_order(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    for rel in ["b/2.jpg", "b/10.jpg", "a/x/1.PNG", "a/0.jpg", "c.jpg", "a/readme.txt", ".hidden/1.jpg",
                "a/.DS_Store", "DATASET/copy/1.jpg", "keep/DATASET.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    plain = walk_source(tmp_path, exclude=["DATASET/**"])
    rels = [f.rel for f in plain.files]
    assert rels == ["a/0.jpg", "a/x/1.PNG", "b/10.jpg", "b/2.jpg", "c.jpg", "keep/DATASET.jpg"]
    assert plain.excluded == 1 and plain.ignored == ["a/readme.txt"]

    request.getfixturevalue("shuffled_scandir")
    for _ in range(3):
        assert [f.rel for f in walk_source(tmp_path, exclude=["DATASET/**"]).files] == rels


def test_exclude_globs() -> None:
    regex = walk.compile_globs(["DATASET/**", "**/thumbs", "*.tmp.jpg"])
    assert regex.fullmatch("DATASET/a/b.jpg") and regex.fullmatch("x/y/thumbs") and regex.fullmatch("a.tmp.jpg")
    assert not regex.fullmatch("TRAIN/DATASET/b.jpg") and not regex.fullmatch("sub/a.tmp.jpg")


# --------------------------------------------------------------------------- cache and pool


def test_cache_round_trip_and_invalidation(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    smooth_rgb(5).save(path)
    entry = walk_source(tmp_path).files[0]
    result = decode_file(entry.path, 10**8)
    cache = DecodeCache(tmp_path / "cache")
    cache.store([(entry, result)])
    cache.close()

    loaded = DecodeCache(tmp_path / "cache").load([str(tmp_path) + os.sep])
    assert cached_result(entry, loaded.get(entry.path), 10**8) == result
    assert cached_result(entry._replace(mtime_ns=entry.mtime_ns + 1), loaded[entry.path], 10**8) is None
    assert cached_result(entry._replace(size=entry.size + 1), loaded[entry.path], 10**8) is None
    # a lower pixel limit turns a cached good image into an over-limit one without decoding
    assert cached_result(entry, loaded[entry.path], 100).reason.startswith("over the pixel limit")


def test_a_cache_from_another_decoder_version_is_dropped(tmp_path: Path, monkeypatch) -> None:
    """Rows written by a decoder whose output differs (a DECODER_VERSION bump) are decoded again."""
    path = tmp_path / "a.png"
    smooth_rgb(5).save(path)
    entry = walk_source(tmp_path).files[0]
    monkeypatch.setattr(decode_cache, "DECODER_VERSION", "older")
    cache = DecodeCache(tmp_path / "cache")
    cache.store([(entry, decode_file(entry.path, 10**8))])
    cache.close()
    assert DecodeCache(tmp_path / "cache").load([str(tmp_path)])  # the same version keeps its rows
    monkeypatch.undo()
    assert DecodeCache(tmp_path / "cache").load([str(tmp_path)]) == {}


def test_unwritable_cache_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = DecodeCache(blocker / "cache")
    assert cache.location == ":memory:"
    cache.close()


def test_the_decode_pool_starts_for_many_files_or_many_bytes() -> None:
    from sustain.data.scan import POOL_MIN_BYTES, POOL_MIN_FILES, use_pool

    assert use_pool(96, 186 * 2**20, workers=2)  # 96 camera photos: 1.2 s on two workers, 2.1 s in-process
    assert not use_pool(96, 2 * 2**20, workers=2)  # 96 thumbnails: the pool's start-up would dominate
    assert use_pool(POOL_MIN_FILES, 0, workers=2) and use_pool(1, POOL_MIN_BYTES, workers=2)
    assert not use_pool(10**5, 10**10, workers=1)


@pytest.mark.slow
def test_process_pool_gives_the_same_results(tmp_path: Path, monkeypatch) -> None:
    paths = []
    for i in range(12):
        p = tmp_path / f"{i:02d}.png"
        smooth_rgb(i).save(p)
        paths.append(str(p))
    (tmp_path / "bad.jpg").write_bytes(b"")
    paths.append(str(tmp_path / "bad.jpg"))

    def collect(workers: int) -> dict:
        out: dict = {}
        decode_files(paths, 10**8, workers, lambda ps, rs: out.update(zip(ps, rs, strict=True)))
        return out

    serial = collect(1)
    pools = []

    class RecordingPool(scan.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(kwargs["max_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(scan, "ProcessPoolExecutor", RecordingPool)
    total = sum(Path(p).stat().st_size for p in paths)
    monkeypatch.setattr(scan, "POOL_MIN_BYTES", total + 1)  # 13 small files: decoded in-process
    assert collect(2) == serial and pools == []
    monkeypatch.setattr(scan, "POOL_MIN_BYTES", total)  # as many bytes as a pool repays: the same results
    pooled = collect(2)
    assert pools == [2]
    assert pooled == serial and len(serial) == 13
    assert serial[str(tmp_path / "bad.jpg")].reason == "zero bytes"


def test_unreadable_folder_is_reported_and_the_walk_goes_on(tmp_path: Path, monkeypatch) -> None:
    for rel in ["ok/1.jpg", "locked/2.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    real = os.scandir

    def scandir(path):  # root can read a chmod-000 folder, so the refusal is simulated
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = walk_source(tmp_path)
    assert [f.rel for f in result.files] == ["ok/1.jpg"]
    assert result.unreadable == ["locked (Permission denied)"]
