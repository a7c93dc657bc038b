"""The training-resolution image cache and draft decoding (sustain/data/image_cache.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sustain.data import scan
from sustain.data.image_cache import ImageCache, disk_usage, load_reduced, stored_side
from sustain.data.scan import (
    OVER_PIXEL_LIMIT,
    SIGNATURE_DRAFT_SIDE,
    TRUNCATED,
    CorruptImage,
    decode_file,
    load_rgb,
)
from sustain.data.signature import signature
from sustain.data.split import (
    COLOUR_TOLERANCE,
    SIGNATURE,
    hamming,
    near_duplicate_groups,
    signatures_array,
)


def photo(seed: int, size: tuple[int, int] = (1600, 1200)) -> Image.Image:
    """A camera-like picture: smooth shapes, texture and sensor noise (real photos from scikit-image)."""
    from skimage import data as skd

    sources = [skd.astronaut, skd.coffee, skd.chelsea, skd.rocket, skd.retina, skd.immunohistochemistry]
    base = Image.fromarray(sources[seed % len(sources)]()[..., :3]).resize(size, Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).integers(-6, 7, (size[1], size[0], 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(base, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality, **kw)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [jpeg(photo(i)) for i in range(6)]


def test_stored_side_follows_the_eval_resize_unless_configured() -> None:
    assert stored_side(224, 0.875) == 256
    assert stored_side(128, 0.875, "auto") == 147
    assert stored_side(224, 0.9, 400) == 400
    assert stored_side(224, 0.875, "off") is None


def _packed(img: Image.Image) -> bytes:
    phash, rest = signature(img)
    return phash.to_bytes(8, "big") + rest


def test_draft_decoding_keeps_the_duplicate_signatures(photos: list[bytes]) -> None:
    """Signatures from a draft decode (>= 256 px) equal the full decode's, and so do the duplicate groups."""
    variants = list(photos)
    variants.append(jpeg(load_rgb(photos[0]), quality=70))  # a re-encoded copy: a near duplicate
    variants.append(jpeg(load_rgb(photos[1]).resize((1200, 900)), quality=85))  # a resized copy
    full = [load_rgb(b) for b in variants]
    drafts = [load_reduced(b, 256) for b in variants]
    for f, (d, size) in zip(full, drafts, strict=True):
        assert size == f.size  # the manifest's width and height stay the full size
        assert min(d.size) < min(f.size)  # it really decoded at a reduced scale
        assert signature(d)[0] == signature(f)[0]  # the pHash itself
        colours = [signatures_array([_packed(im)])["colour"][0].astype(int) for im in (d, f)]
        assert np.abs(colours[0] - colours[1]).max() <= 6  # well inside split.COLOUR_TOLERANCE (16)
    groups_full = near_duplicate_groups([_packed(f) for f in full], 4)
    groups_draft = near_duplicate_groups([_packed(d) for d, _ in drafts], 4)
    assert groups_full.tolist() == groups_draft.tolist()
    assert groups_full[6] == groups_full[0] and groups_full[7] == groups_full[1]


def test_draft_decoding_still_detects_truncated_and_corrupt_files(photos: list[bytes]) -> None:
    data = photos[0]
    with pytest.raises(CorruptImage) as exc:
        load_reduced(data[: len(data) // 2], 256)
    assert exc.value.reason.startswith(TRUNCATED)
    with pytest.raises(CorruptImage, match="zero bytes"):
        load_reduced(b"", 256)
    with pytest.raises(CorruptImage, match="not an image"):
        load_reduced(b"GIF89a" + b"\0" * 40, 256)
    with pytest.raises(CorruptImage, match="over the pixel limit"):
        load_reduced(data, 256, max_pixels=1000)


def _drift(a: bytes, b: bytes) -> tuple[int, int]:
    """(most bits any 64-bit hash differs by, largest colour difference) between two packed signatures,
    over whatever fields split.SIGNATURE holds."""
    x, y = signatures_array([a]), signatures_array([b])
    bits = colour = 0
    for name in SIGNATURE.names:
        u, v = x[name].ravel(), y[name].ravel()
        if u.dtype.itemsize == 8:
            bits = max(bits, int(hamming(u.astype(np.uint64), v.astype(np.uint64)).max()))
        else:
            colour = max(colour, int(np.abs(u.astype(int) - v.astype(int)).max()))
    return bits, colour


def test_ingestion_draft_decode_keeps_signatures_groups_and_sizes(tmp_path: Path, photos, monkeypatch) -> None:
    """decode_file decodes JPEGs at a reduced scale: every part of the signature stays within 2 bits /
    half the colour tolerance of the full decode's, the near-duplicate groups are the same, and the
    recorded size, the pixel limit and truncation are those of the original file."""
    rotated = Image.Exif()
    rotated[0x0112] = 6  # shown rotated by 90 degrees
    files = [*photos,
             jpeg(load_rgb(photos[0]), quality=70),  # re-encoded copy of 0
             jpeg(load_rgb(photos[1]).resize((1200, 900)), quality=85),  # resized copy of 1
             jpeg(photo(3, (4032, 3024)), quality=92),  # camera size, a larger copy of 3
             jpeg(photo(4, (4032, 3024)), quality=88, exif=rotated.tobytes())]
    paths = []
    for i, data in enumerate(files):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(data)
    decoded = []  # (decoded size, reported size) of each load in decode_file
    real = scan.load_rgb_sized

    def spy(*args, **kwargs):
        img, size = real(*args, **kwargs)
        decoded.append((img.size, size))
        return img, size

    monkeypatch.setattr(scan, "load_rgb_sized", spy)
    results = [decode_file(str(p), 10**9) for p in paths]
    monkeypatch.undo()
    fulls = [load_rgb(data) for data in files]
    for result, full, (shape, size) in zip(results, fulls, decoded, strict=True):
        assert result.ok and (result.width, result.height) == size == full.size
        assert SIGNATURE_DRAFT_SIDE <= min(shape) < min(full.size)  # really decoded at a reduced scale
        packed_full = signature(full)
        bits, colour = _drift(result.signature, packed_full[0].to_bytes(8, "big") + packed_full[1])
        assert bits <= 2 and colour <= COLOUR_TOLERANCE // 2
    assert decoded[-1][0] == (378, 504)  # the rotated camera photo at 1/8, upright
    groups_draft = near_duplicate_groups([r.signature for r in results], 4)
    groups_full = near_duplicate_groups([_packed(f) for f in fulls], 4)
    assert groups_draft.tolist() == groups_full.tolist()
    assert groups_draft.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 3, 6]  # the three copies join their originals

    camera = files[-2]
    truncated = tmp_path / "truncated.jpg"
    for data in (camera, jpeg(photo(5, (4032, 3024)), progressive=True)):
        for keep in (len(data) // 2, len(data) - 64, len(data) - 2):  # half gone, the last scan lines, only the end marker
            truncated.write_bytes(data[:keep])
            result = decode_file(str(truncated), 10**9)
            assert not result.ok and result.reason.startswith(TRUNCATED), (keep, result.reason)
    over = decode_file(str(paths[-2]), 4032 * 3024 - 1)
    assert over.reason.startswith(OVER_PIXEL_LIMIT) and (over.width, over.height) == (4032, 3024)


def test_exif_rotated_photo_reports_its_upright_size() -> None:
    img = photo(2, (1200, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    data = jpeg(img, exif=exif.tobytes())
    reduced, size = load_reduced(data, 128)
    assert size == load_rgb(data).size == (800, 1200)
    assert reduced.height > reduced.width


def test_cache_hit_and_miss_give_the_same_pixels_and_a_changed_file_is_redone(tmp_path: Path, photos) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(photos[0])
    cache = ImageCache(str(tmp_path / "cache"), side=160)
    miss = np.asarray(cache.load(str(src)))
    assert min(miss.shape[:2]) == 160 and disk_usage(cache.directory)["images"] == 1
    hit = np.asarray(ImageCache(str(tmp_path / "cache"), side=160).load(str(src)))
    assert np.array_equal(miss, hit)
    # The stored copy is close to the full decode resized the same way (no colour shift, no blur).
    reference = np.asarray(load_rgb(photos[0]).resize(miss.shape[1::-1], Image.Resampling.LANCZOS), dtype=float)
    assert np.abs(reference - miss).mean() < 3.0

    src.write_bytes(photos[1])  # the file changes: its size and mtime key a new entry
    os.utime(src, ns=(1, 10**18))
    changed = np.asarray(cache.load(str(src)))
    assert not np.array_equal(changed, miss)
    assert disk_usage(cache.directory)["images"] == 2
    usage = disk_usage(cache.directory)
    assert 0 < usage["bytes_per_image"] < 60_000  # compact: ~1/10 of the raw pixels


def test_small_images_are_read_from_the_original_and_broken_ones_still_fail(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    photo(3, (120, 90)).save(small)
    cache = ImageCache(str(tmp_path / "cache"), side=160)
    assert np.array_equal(np.asarray(cache.load(str(small))), np.asarray(load_rgb(small)))
    assert disk_usage(cache.directory)["images"] == 0
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg(photo(4))[:5000])
    with pytest.raises(CorruptImage, match="truncated"):
        cache.load(str(broken))


def test_an_unwritable_cache_folder_still_loads_and_counts_the_failure(tmp_path: Path, photos, caplog) -> None:
    src = tmp_path / "a.jpg"
    src.write_bytes(photos[0])
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    cache = ImageCache(str(blocker / "cache"), side=160)
    img = cache.load(str(src))
    assert min(img.size) == 160 and cache.write_failures == 1
    assert "not writable" in caplog.text


def test_cached_loading_is_the_same_with_any_number_of_workers(tmp_path: Path, photos) -> None:
    from torch.utils.data import DataLoader

    from sustain.data.dataset import ManifestDataset, collate_skip_failed
    from sustain.data.manifest import ManifestRow

    rows = []
    for i, data in enumerate(photos[:4]):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(data)
        rows.append(ManifestRow(str(path), "s", "a", (0,), "train", str(i), i))

    def batches(workers: int) -> torch.Tensor:
        cache = ImageCache(str(tmp_path / "cache"), side=96)
        ds = ManifestDataset(rows, 2, ["s"], lambda im: torch.from_numpy(np.asarray(im.resize((64, 64))).copy()),
                             image_cache=cache)
        loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_skip_failed)
        return torch.cat([b.images for b in loader])

    filled_by_two_workers = batches(2)  # a cold cache, filled concurrently
    assert torch.equal(filled_by_two_workers, batches(0))  # read back warm in the main process
    assert not list((tmp_path / "cache").rglob("*.tmp"))


@pytest.mark.parametrize(("workers", "side"), [(1, 160), (2, 100)])
def test_ingestion_fills_the_cache_with_the_pixels_a_first_read_would_store(tmp_path: Path, photos,
                                                                            workers: int, side: int) -> None:
    """Each file ingestion decodes also gets its training-resolution copy, from the same read (in the
    decode workers too): at 100 px from ingestion's own 1/8 decode of the 1600x1200 photos, at 160 px
    from a finer one. Small originals and broken files get none; a later read is a hit."""
    from engine_helpers import tiny_config

    from sustain.data.lake import ingest
    from sustain.data.scan import POOL_MIN_FILES
    from sustain.taxonomy import build_taxonomy

    rng = np.random.default_rng(0)
    folders = {name: tmp_path / "lake" / "tiny" / name for name in ("red", "green")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    large = [folders["red"] / f"photo{i}.jpg" for i in range(len(photos))]
    for path, data in zip(large, photos, strict=True):
        path.write_bytes(data)
    for i in range(POOL_MIN_FILES if workers > 1 else 8):  # enough files for the decode pool when it is asked for
        noise = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
        large.append(folders["green"] / f"noise{i:03d}.jpg")
        large[-1].write_bytes(jpeg(Image.fromarray(noise)))
    Image.new("RGB", (64, 48), (200, 30, 30)).save(folders["red"] / "small.png")
    (folders["green"] / "broken.jpg").write_bytes(photos[0][:2000])

    cfg = tiny_config(tmp_path / "lake", tmp_path / "out", classes=["red", "green"],
                      data={"ingest_workers": workers, "cache_dir": str(tmp_path / "decode_cache")})
    cache = ImageCache(str(tmp_path / "decode_cache" / "images"), side=side)
    lake = ingest(cfg, build_taxonomy(**cfg.taxonomy.model_dump()), image_cache=cache)
    assert len(lake.rows) == len(large) + 1 and disk_usage(cache.directory)["images"] == len(large)

    lazy = ImageCache(str(tmp_path / "lazy"), side=side)  # fills on first read, as before ingestion did it
    for path in large[:6] + large[-3:]:
        assert np.array_equal(np.asarray(cache.load(str(path))), np.asarray(lazy.load(str(path))))
    assert disk_usage(cache.directory)["images"] == len(large)  # those reads were hits
