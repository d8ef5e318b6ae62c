"""Drawing a scene: the grid fills the top four fifths of the image, the word the band below.

Shapes are centred in their cells (every shape covers its cell's centre); noise touches only
background pixels, so object and text colours stay exact.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from owlkit.zoo.world.scenes import Scene
from owlkit.zoo.world.vocabulary import BACKGROUND, COLOURS, GRID, TEXT_COLOUR


def layout(image_size: int) -> tuple[int, float, float]:
    """``(grid_height, cell_width, cell_height)``: the grid fills the top, the text band the bottom fifth."""
    band = image_size // 5
    grid_h = image_size - band
    return grid_h, image_size / GRID, grid_h / GRID


def cell_center(row: int, col: int, image_size: int = 224) -> tuple[int, int]:
    """Pixel ``(x, y)`` of a cell's centre; every shape covers it."""
    _, cw, ch = layout(image_size)
    return int((col + 0.5) * cw), int((row + 0.5) * ch)


def text_box(image_size: int = 224) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the band below the grid where the word is written."""
    grid_h, _, _ = layout(image_size)
    return 0, grid_h, image_size, image_size


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1, or no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _fit_font(word: str, image_size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    x0, y0, x1, y1 = text_box(image_size)
    size = max(6, int((y1 - y0) * 0.85))
    while True:
        font = _font(size)
        left, top, right, bottom = font.getbbox(word)
        if (right - left <= 0.92 * (x1 - x0) and bottom - top <= 0.9 * (y1 - y0)) or size <= 6:
            return font
        size -= 1


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + 0.95 * r, cy + 0.75 * r), (cx - 0.95 * r, cy + 0.75 * r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else 0.45 * r
            angle = -np.pi / 2 + i * np.pi / 5
            points.append((cx + radius * float(np.cos(angle)), cy + radius * float(np.sin(angle))))
        return points
    raise ValueError(shape)


def render(scene: Scene, image_size: int = 224) -> Image.Image:
    """Draw ``scene`` as an ``image_size`` x ``image_size`` RGB image."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    _, cw, ch = layout(image_size)
    for o in scene.objects:
        cx, cy = cell_center(o.row, o.col, image_size)
        r = min(cw, ch) * (0.42 if o.size == "big" else 0.24)
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            h = 0.85 * r
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:
            draw.polygon(_shape_points(o.shape, cx, cy, r), fill=fill)
    if scene.noise > 0:
        arr = np.asarray(img).astype(np.float32)
        background = np.all(arr == np.array(BACKGROUND, dtype=np.float32), axis=-1, keepdims=True)
        noise_rng = np.random.default_rng(scene.noise_seed)
        noise = noise_rng.normal(0.0, scene.noise, size=(image_size, image_size, 1))
        arr = np.where(background, arr + noise.astype(np.float32), arr)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
    if scene.word:
        font = _fit_font(scene.word, image_size)
        x0, y0, x1, y1 = text_box(image_size)
        left, top, right, bottom = draw.textbbox((0, 0), scene.word, font=font)
        x = (x0 + x1 - (right - left)) / 2 - left
        y = (y0 + y1 - (bottom - top)) / 2 - top
        draw.text((x, y), scene.word, fill=TEXT_COLOUR, font=font)
    return img
