"""The near-duplicate signature of a decoded image (SPEC §4; the layout is `split.SIGNATURE`).

A 64-bit pHash (the 8x8 lowest frequencies of a 32x32 grey DCT, thresholded at
their median), the pHashes of the mirror and of five centred crops, 12 colour
means and each hash's detail for the verifier (`split.near_duplicate_groups`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .split import CROPS, DETAIL_INDEX

_DCT = None


def _dct_matrix() -> np.ndarray:
    global _DCT
    if _DCT is None:
        n = np.arange(32)
        dct = np.sqrt(2.0 / 32) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)
        dct[0] /= np.sqrt(2.0)
        _DCT = dct
    return _DCT


def _low_frequencies(greys: np.ndarray) -> np.ndarray:
    """The 8x8 lowest DCT frequencies of a stack of 32x32 grey arrays, 64 per array."""
    dct = _dct_matrix()
    return (dct @ greys @ dct.T)[:, :8, :8].reshape(len(greys), 64)


def _phash_bits(low: np.ndarray) -> np.ndarray:
    """pHashes, as 8 bytes each, of rows of 64 low frequencies: each thresholded at its median."""
    # The median of 64 values, as np.median computes it (the mean of the middle two), without its
    # Python overhead: a fifth of a small image's signature.
    middle = np.sort(low, axis=1)[:, 31:33]
    return np.packbits(low > (middle[:, :1] + middle[:, 1:]) / 2, axis=1)


def _detail(low: np.ndarray) -> np.ndarray:
    """The verifier's detail of each row of 64 low frequencies: the 35 lowest after the mean
    (split.DETAIL_INDEX), centred and scaled to -127..127 (int8)."""
    ac = low[:, DETAIL_INDEX]
    ac = ac - np.add.reduce(ac, axis=1, keepdims=True) / ac.shape[1]  # ac.mean(axis=1), without its overhead
    peak = np.abs(ac).max(axis=1, keepdims=True)
    return np.rint(np.divide(ac * 127, peak, out=np.zeros_like(ac), where=peak > 0)).astype(np.int8)


def _grey32(grey: Image.Image, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    return _pixels(grey.resize((32, 32), Image.Resampling.LANCZOS, box=box, reducing_gap=2.0))


def _pixels(img: Image.Image) -> np.ndarray:
    """An 8-bit 'L' or 'RGB' image as float64 (height, width[, 3]): np.asarray(img) without the
    array-interface detour, which cost a sixth of a small image's signature."""
    shape = (img.height, img.width) if img.mode == "L" else (img.height, img.width, 3)
    return np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(shape).astype(np.float64)


def perceptual_hash(img: Image.Image) -> int:
    """64-bit pHash: the 8x8 lowest frequencies of a 32x32 greyscale DCT, thresholded at their median."""
    return int.from_bytes(_phash_bits(_low_frequencies(_grey32(img.convert("L"))[None])).tobytes(), "big")


_REGIONS = None
_CROP_DCT = None
_GRID = 64  # crops are cut from the grey image resized to this square once


def _region_weights() -> np.ndarray:
    """(4, 256) averaging weights over a 16x16 thumbnail: whole, centre, top half, bottom half."""
    global _REGIONS
    if _REGIONS is None:
        masks = np.zeros((4, 16, 16))
        masks[0], masks[1, 4:12, 4:12], masks[2, :8], masks[3, 8:] = 1, 1, 1, 1
        _REGIONS = (masks / masks.sum(axis=(1, 2), keepdims=True)).reshape(4, 256)
    return _REGIONS


def _box_matrix(fraction: float) -> np.ndarray:
    """(32, _GRID) weights that average the centred `fraction` of a line of _GRID pixels into 32."""
    lo = _GRID * (1 - fraction) / 2
    edges = lo + np.arange(33) * (_GRID * fraction / 32)
    pixels = np.arange(_GRID)
    overlap = np.clip(np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _crop_dct() -> tuple[np.ndarray, np.ndarray]:
    """Per crop, the rows and the columns of (8 lowest DCT frequencies x crop-and-resize to 32):
    a crop's low frequencies are then rows @ grey64 @ columns.T, one product for all crops."""
    global _CROP_DCT
    if _CROP_DCT is None:
        low = _dct_matrix()[:8]
        _CROP_DCT = (np.stack([low @ _box_matrix(fy) for _, fy in CROPS]),
                     np.stack([low @ _box_matrix(fx) for fx, _ in CROPS]))
    return _CROP_DCT


def signature(img: Image.Image) -> tuple[int, bytes]:
    """(pHash, the rest of the near-duplicate signature (split.SIGNATURE)): the pHashes of the
    mirror and of the centred crops, the mean colours of the whole image, its centre, top and
    bottom halves, then the detail of each of the 7 hashes (from the same DCT: no extra cost).
    The crops are matrix products on one 64x64 grey image (3 resizes per image, not 8:
    decoding stays the cost of a cold ingest)."""
    grey = img.convert("L")
    full = _grey32(grey)
    flipped = _low_frequencies(np.stack([full, full[:, ::-1]]))
    grid = _pixels(grey.resize((_GRID, _GRID), Image.Resampling.LANCZOS, reducing_gap=2.0))
    rows, cols = _crop_dct()
    left = (rows.reshape(-1, _GRID) @ grid).reshape(len(CROPS), 8, _GRID)  # one BLAS product for every crop
    low = np.concatenate([flipped, np.einsum("cig,cjg->cij", left, cols).reshape(len(CROPS), 64)])
    hashes = _phash_bits(low)
    small = _pixels(img.resize((16, 16), Image.Resampling.BOX, reducing_gap=2.0))
    means = _region_weights() @ small.reshape(256, 3)
    return (int.from_bytes(hashes[0].tobytes(), "big"),
            hashes[1:].tobytes() + np.rint(means).astype(np.uint8).tobytes() + _detail(low).tobytes())
