"""Drawing and encoding the demo lake's images (pure): each of the 30 classes is a
(shape, foreground colour, background colour) triple, drawn with jittered position,
size, angle, colours and pixel noise, and encoded with fixed settings and no
metadata, so the same random stream gives byte-identical files. `sustain.data.demo`
plans and writes the lake.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle", "ring", "cross", "stripes")
FOREGROUNDS = (  # bright, saturated
    (220, 40, 40),
    (40, 185, 60),
    (45, 85, 235),
    (240, 215, 35),
    (205, 50, 205),
    (40, 215, 225),
)
BACKGROUNDS = (  # dull, and spread in luminance so greyscale keeps them apart
    (22, 22, 28),
    (236, 232, 218),
    (128, 128, 128),
    (112, 78, 40),
    (58, 38, 98),
)


@dataclass(frozen=True)
class ClassStyle:
    shape: str
    foreground: tuple[int, int, int]
    background: tuple[int, int, int]


def class_style(index: int) -> ClassStyle:
    """The look of class `index` (0..29): unique (fg, bg) pair and unique (bg, shape) pair."""
    if not 0 <= index < len(FOREGROUNDS) * len(BACKGROUNDS):
        raise ValueError(f"the demo lake draws {len(FOREGROUNDS) * len(BACKGROUNDS)} classes, not index {index}")
    return ClassStyle(
        shape=SHAPES[index % len(SHAPES)],
        foreground=FOREGROUNDS[index // len(BACKGROUNDS)],
        background=BACKGROUNDS[index % len(BACKGROUNDS)],
    )


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    values = np.clip(np.asarray(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return tuple(int(v) for v in values)


def _rotated(points: list[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _bar(cx: float, cy: float, half_len: float, half_w: float, angle: float, offset: float = 0.0):
    corners = [(-half_len, offset - half_w), (half_len, offset - half_w),
               (half_len, offset + half_w), (-half_len, offset + half_w)]
    return _rotated(corners, cx, cy, angle)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                angle: float, colour: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=max(2, int(r * 0.38)))
    elif shape == "square":
        draw.polygon(_bar(cx, cy, r * 0.8, r * 0.8, angle), fill=colour)
    elif shape == "triangle":
        pts = [(r * 1.1 * np.cos(t), r * 1.1 * np.sin(t)) for t in np.deg2rad([-90, 30, 150])]
        draw.polygon(_rotated(pts, cx, cy, angle), fill=colour)
    elif shape == "cross":
        draw.polygon(_bar(cx, cy, r, r * 0.25, angle), fill=colour)
        draw.polygon(_bar(cx, cy, r, r * 0.25, angle + np.pi / 2), fill=colour)
    elif shape == "stripes":
        for offset in (-0.7, 0.0, 0.7):
            draw.polygon(_bar(cx, cy, r, r * 0.18, angle, offset * r), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_image(style: ClassStyle, rng: np.random.Generator, size: int = IMAGE_SIZE,
                 clutter: bool = False) -> Image.Image:
    """Draw one RGB image of a class. `clutter` adds real_world-style distractors."""
    big = size * 2  # draw at 2x and box-filter down: smooth edges without antialiasing support
    background = _jitter(style.background, rng, 14)
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    if clutter:  # low-contrast lines and blobs near the background colour
        for _ in range(int(rng.integers(3, 7))):
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, big, size=4))
            colour = _jitter(background, rng, 55)
            if rng.random() < 0.5:
                draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 7)))
            else:
                draw.rectangle((min(x0, x1), min(y0, y1), min(x0, x1) + big / 6, min(y0, y1) + big / 6), fill=colour)
    cx, cy = (float(v) for v in big / 2 + rng.uniform(-0.12, 0.12, size=2) * big)
    radius = float(rng.uniform(0.2, 0.3)) * big
    angle = float(np.deg2rad(rng.uniform(-20, 20)))
    _draw_shape(draw, style.shape, cx, cy, radius, angle, _jitter(style.foreground, rng, 20))
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    if clutter:  # uneven lighting
        ramp = np.linspace(float(rng.uniform(0.75, 0.95)), float(rng.uniform(1.0, 1.15)), size, dtype=np.float32)
        pixels = pixels * (ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None])
    pixels = pixels + rng.normal(0.0, 11.0 if clutter else 7.0, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def encode_image(image: Image.Image, fmt: str, mode: str) -> bytes:
    """Encode with fixed settings and no metadata, so equal pixels give equal bytes."""
    if mode == "RGBA":  # opaque object, transparent corners: a cut-out product photo
        alpha = Image.new("L", image.size, 255)
        w, h = image.size
        ImageDraw.Draw(alpha).rectangle((0, 0, w // 8, h // 8), fill=0)
        ImageDraw.Draw(alpha).rectangle((w - w // 8, h - h // 8, w, h), fill=0)
        image = image.copy()
        image.putalpha(alpha)
    elif mode == "P":
        image = image.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=88, subsampling=0, optimize=False, progressive=False)
    else:
        image.save(buffer, "PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def style_dict(style: ClassStyle) -> dict[str, Any]:
    """A class's look as JSON (demo_lake.json's ``styles``)."""
    return {"shape": style.shape, "foreground": list(style.foreground), "background": list(style.background)}
