"""Image preprocessing of both mPLUG-Owl generations, reproduced bit for bit.

Every official entry point ends in transformers' ``CLIPImageProcessor`` (resize the shortest
side to ``S`` with PIL bicubic, centre-crop ``S x S``, rescale by 1/255, normalise with the CLIP
mean/std, channels first, float32). What differs is the step before it, selected here by
``mode``:

* ``resize`` (default for v2): stretch to a ``max(w, h)`` square with PIL bicubic
  (mPLUG-Owl2 README quick start and every ``evaluate_*.py``: ``process_images`` mode
  ``resize``);
* ``pad``: paste centred on a ``max(w, h)`` square filled with (122, 116, 104) =
  ``int(255 * CLIP mean)`` (mPLUG-Owl2 ``serve/cli.py`` default, training with
  ``--image_aspect_ratio pad``);
* ``crop``: nothing, the CLIP step's shortest-side resize and centre crop do it all
  (mPLUG-Owl2 model worker when the config has no ``image_aspect_ratio``);
* ``stretch`` (default for v1): PIL bicubic resize straight to ``S x S``, aspect ratio not
  kept; the CLIP step is then a no-op (mPLUG-Owl ``MplugOwlProcessor``).

The numerics follow transformers 4.28/4.31 (the versions the official code pins): the CLIP
resize goes through PIL on uint8 pixels, the output size is ``int(S * long / short)``, the crop
offsets are ``(size - S) // 2``, the rescale happens in float64 and is cast to float32, the
normalisation is ``(x - mean) / std`` in float32. This module does it with PIL and numpy only
(no transformers import, which takes seconds) and matches the conformance fixtures exactly
(max abs difference 0.0).

**PIL resampling order.** A two-axis PIL resize runs one 1-D pass per axis and rounds to uint8
in between, so the result depends on which axis goes first. Pillow up to 12.x ran the
horizontal pass first (12.x excepted images over 100 times taller than wide); Pillow 13 runs the vertical pass first when the height shrinks by more
than twice as many pixels as the width (``in_h - out_h > 2 * (in_w - out_w)``). The conformance
fixtures were produced with the Pillow 13 rule (they differ by up to 5 grey levels from
Pillow 12 on a portrait image), so :func:`pil_resize` applies that rule itself, as two 1-D
resizes, which gives the same bytes whatever Pillow is installed.

**Departures from the official code** (it simply calls ``Image.open(path).convert("RGB")``):

* EXIF orientation is applied (``ImageOps.exif_transpose``); the official code feeds phone
  photos sideways.
* Transparent images (RGBA, LA, palette or RGB/L with a transparency key) are composited onto
  a white background; ``convert("RGB")`` would expose whatever colour the transparent pixels
  hold (often black).
* 16-bit and 32-bit greyscale ("I;16*", "I", "F") are scaled to 8 bit (``round(v / 257)``,
  floats taken as 0..1 when their maximum is at most 1, else 0..255); ``convert("RGB")`` clips
  them to 255 (a nearly white image).
* Images over ``max_pixels`` (default 64 megapixels) are refused with an
  :class:`~owlkit.errors.InputError` before decoding, instead of PIL's
  ``DecompressionBombWarning``/``Error``; missing, empty, truncated and non-image files raise
  :class:`~owlkit.errors.InputError` with a one-line message naming the file.
* v1 ``stretch`` resizes to the model's own ``S`` (the official processor hard-codes 224, which
  is ``S`` for the released checkpoint).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from owlkit.errors import InputError, first_line

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
#: ``tuple(int(x * 255) for x in CLIP_MEAN)``: the official ``expand2square`` background.
PAD_COLOR: tuple[int, int, int] = tuple(int(x * 255) for x in CLIP_MEAN)  # (122, 116, 104)
RESCALE_FACTOR = 1 / 255  # 0.00392156862745098, as preprocessor_config.json stores it
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC (preprocessor_config.json "resample": 3)

MODES = ("resize", "pad", "crop", "stretch")
DEFAULT_MAX_PIXELS = 64_000_000

_TRANSPARENT_MODES = ("RGBA", "LA", "RGBa", "La", "PA")
_GENERATIONS = {
    1: 1, "1": 1, "v1": 1, "owl1": 1, "mplug-owl": 1, "mplug_owl": 1,
    2: 2, "2": 2, "v2": 2, "owl2": 2, "mplug-owl2": 2, "mplug_owl2": 2,
}


def generation_number(generation: int | str) -> int:
    """1 for mPLUG-Owl, 2 for mPLUG-Owl2 (accepts 1/2, "v1"/"v2", "owl1"/"owl2", model names)."""
    key = generation.lower() if isinstance(generation, str) else generation
    if key not in _GENERATIONS:
        raise InputError(f"unknown model generation {generation!r}; use 1 (mPLUG-Owl) or 2 (mPLUG-Owl2)")
    return _GENERATIONS[key]


def default_mode(generation: int | str) -> str:
    """The aspect-ratio mode of the official inference entry point: v1 ``stretch``, v2 ``resize``."""
    return "stretch" if generation_number(generation) == 1 else "resize"


# -- loading -----------------------------------------------------------------------------------


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        return text if len(text) <= 120 else text[:60] + "..." + text[-40:]
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def _check_pixels(width: int, height: int, max_pixels: int | None, name: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"{name}: image is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the limit of "
            f"{max_pixels / 1e6:g} megapixels; shrink it or raise max_pixels"
        )


def _bomb(exc: Exception, name: str, max_pixels: int | None) -> InputError:
    """Pillow refuses to even open images over twice its own pixel limit: say so with our limit."""
    found = re.search(r"Image size \((\d+) pixels\)", str(exc))
    size = f" ({int(found.group(1)) / 1e6:.1f} megapixels)" if found else ""
    if max_pixels is not None:
        return InputError(f"{name}: image is too large{size}, over the limit of {max_pixels / 1e6:g} megapixels; "
                          "shrink it or raise max_pixels")
    return InputError(f"{name}: image is too large{size} to decode safely (a possible decompression bomb)")


def _open_bytes_or_path(source: str | os.PathLike | bytes, name: str, max_pixels: int | None) -> Image.Image:
    """Open and fully decode an encoded image, turning every failure into one InputError line."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError(f"{name}: image data is empty")
        stream: Any = io.BytesIO(data)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise InputError(f"{name}: no such file") from None
        except OSError as exc:
            raise InputError(f"{name}: cannot read file ({first_line(exc)})") from None
        if path.is_dir():
            raise InputError(f"{name}: is a directory, not an image file")
        if size == 0:
            raise InputError(f"{name}: file is empty")
        try:
            stream = io.BytesIO(path.read_bytes())
        except OSError as exc:
            raise InputError(f"{name}: cannot read file ({first_line(exc)})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
        except UnidentifiedImageError:
            raise InputError(f"{name}: not an image file (format not recognised)") from None
        except Image.DecompressionBombError as exc:
            raise _bomb(exc, name, max_pixels) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputError(f"{name}: cannot read image ({first_line(exc)})") from None
        _check_pixels(image.width, image.height, max_pixels, name)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError) as exc:
            problem = first_line(exc)
            if "truncated" in problem.lower():  # Pillow: "image file is truncated (N bytes not processed)"
                detail = problem if problem.lower().startswith("image file is truncated") else f"image file is truncated ({problem})"
                raise InputError(f"{name}: {detail}") from None
            raise InputError(f"{name}: cannot decode image ({problem})") from None
    return image


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    """HWC uint8 (C in 1, 3, 4), HW uint8 greyscale, or the same in uint16 / bool."""
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = _scale16(a)
    elif a.dtype != np.uint8:
        raise InputError(f"{name}: image arrays must be uint8 (or uint16 / bool), got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(a), "L")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[2] == 3 else "RGBA")
    raise InputError(f"{name}: image arrays must be HxW or HxWxC with C in 1, 3, 4; got shape {list(a.shape)}")


def _scale16(a: np.ndarray) -> np.ndarray:
    """uint16 (or int in 0..65535) -> uint8 with rounding: round(v * 255 / 65535) = round(v / 257)."""
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (transparency onto white, 16-bit scaled, see module doc)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _TRANSPARENT_MODES or ("transparency" in image.info and mode in ("P", "L", "RGB", "1")):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I;16") or mode == "I":
        grey = _scale16(np.asarray(image))
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        a = np.asarray(image, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        grey = np.clip(np.floor(a * scale + 0.5), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "1":
        return image.convert("L").convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot convert an image of mode {mode!r} to RGB ({first_line(exc)})") from None


def load_image(source: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, exif: bool = True) -> Image.Image:
    """Any supported image source -> an 8-bit RGB PIL image, EXIF orientation applied.

    ``source``: a path (``str`` / ``PathLike``, also ``file://`` URLs and ``data:`` URLs with
    base64 payload), encoded bytes, a PIL image, or a numpy array (HxWx3/4 or HxW, uint8).
    Remote ``http(s)://`` URLs are refused (nothing is downloaded here).
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, max_pixels, name)
        image = source
    elif isinstance(source, np.ndarray):
        if source.ndim >= 2:
            _check_pixels(int(source.shape[1]), int(source.shape[0]), max_pixels, name)
        image = _from_array(source, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        image = _open_bytes_or_path(source, name, max_pixels)
    elif isinstance(source, (str, os.PathLike)):
        text = str(source)
        if text.startswith("data:"):
            header, _, payload = text.partition(",")
            if ";base64" not in header:
                raise InputError("data URL images must be base64-encoded (data:image/...;base64,...)")
            try:
                data = base64.b64decode(payload, validate=False)
            except ValueError as exc:
                raise InputError(f"data URL: bad base64 payload ({first_line(exc)})") from None
            image = _open_bytes_or_path(data, "<data URL>", max_pixels)
        elif text.startswith(("http://", "https://")):
            raise InputError(f"{name}: remote image URLs are not fetched; download the file and pass its path")
        else:
            if text.startswith("file://"):
                text = text[len("file://"):]
                name = _describe(text)
            image = _open_bytes_or_path(text, name, max_pixels)
    else:
        raise InputError(
            f"unsupported image source of type {type(source).__name__}; "
            "pass a path, bytes, a PIL image or a uint8 numpy array"
        )
    if exif:
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001  (a malformed EXIF block must not reject the image)
            pass
    return to_rgb(image)


# -- geometry ----------------------------------------------------------------------------------


def pil_resize(image: Image.Image, size: tuple[int, int], resample: int = BICUBIC) -> Image.Image:
    """``image.resize(size, resample)`` with Pillow 13's pass order, whatever Pillow is installed.

    Two-axis resizes are done as two 1-D resizes: vertical first when the height shrinks by
    more than twice as many pixels as the width, else horizontal first (see module doc).
    """
    width, height = int(size[0]), int(size[1])
    in_w, in_h = image.size
    if (width, height) == (in_w, in_h):
        return image.copy()
    if width == in_w or height == in_h or resample == Image.Resampling.NEAREST:
        return image.resize((width, height), resample)
    vertical_first = (in_h - height) > 0 and (in_h - height) > (in_w - width) * 2
    if vertical_first:
        return image.resize((in_w, height), resample).resize((width, height), resample)
    return image.resize((width, in_h), resample).resize((width, height), resample)


def expand2square(image: Image.Image, background: Sequence[int] = PAD_COLOR) -> Image.Image:
    """The official ``expand2square``: paste centred on a ``max(w, h)`` square of ``background``."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), tuple(background))
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def _shortest_edge_size(width: int, height: int, shortest_edge: int) -> tuple[int, int]:
    """transformers' ``get_resize_output_image_size(default_to_square=False)``, as (w, h)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def clip_preprocess(
    image: Image.Image,
    *,
    size: int | tuple[int, int] = 224,
    crop_size: tuple[int, int] | None = None,
    resample: int = BICUBIC,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    rescale_factor: float = RESCALE_FACTOR,
    do_resize: bool = True,
    do_center_crop: bool = True,
    do_rescale: bool = True,
    do_normalize: bool = True,
) -> np.ndarray:
    """transformers' ``CLIPImageProcessor.preprocess`` on one RGB image -> [3, H, W] float32.

    ``size``: an int is ``{"shortest_edge": size}``; a ``(height, width)`` pair resizes to
    exactly that. ``crop_size`` is ``(height, width)`` (default: the size, square).
    """
    if do_resize:
        if isinstance(size, int):
            target = _shortest_edge_size(image.width, image.height, size)
        else:
            target = (int(size[1]), int(size[0]))
        image = pil_resize(image, target, resample)
    pixels = np.asarray(image, dtype=np.uint8)
    if do_center_crop:
        if crop_size is None:
            crop_size = (size, size) if isinstance(size, int) else tuple(size)
        crop_h, crop_w = int(crop_size[0]), int(crop_size[1])
        pixels = _center_crop(pixels, crop_h, crop_w)
    if do_rescale:
        values = (pixels * rescale_factor).astype(np.float32)  # float64 product, cast (transformers)
    else:
        values = pixels.astype(np.float32)
    if do_normalize:
        values = (values - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)


def _center_crop(pixels: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """transformers' ``center_crop``: offsets ``(size - crop) // 2``; zero-pads when too small."""
    height, width = pixels.shape[:2]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return pixels[top : top + crop_h, left : left + crop_w]
    out_h, out_w = max(height, crop_h), max(width, crop_w)
    padded = np.zeros((out_h, out_w) + pixels.shape[2:], dtype=pixels.dtype)
    top_pad, left_pad = (out_h - height) // 2, (out_w - width) // 2
    padded[top_pad : top_pad + height, left_pad : left_pad + width] = pixels
    top, left = (out_h - crop_h) // 2, (out_w - crop_w) // 2
    return padded[top : top + crop_h, left : left + crop_w]


# -- the processor -----------------------------------------------------------------------------


class OwlImageProcessor:
    """Images -> ``pixel_values`` [N, 3, S, S] float32, exactly as the official entry points.

    Args:
        image_size: ``S``, the vision encoder's input side (the CLIP shortest edge and crop).
        mode: ``"resize"``, ``"pad"``, ``"crop"`` or ``"stretch"`` (see module doc); default
            per generation: v1 ``stretch``, v2 ``resize``.
        generation: 1 or 2; only used to pick the default ``mode``.
        max_pixels: refuse larger images (``None``: no limit but PIL's own).
        size / crop_size / mean / std / rescale_factor / resample / do_*: the CLIP step's
            settings (``preprocessor_config.json``); ``size`` defaults to ``image_size``.
    """

    def __init__(
        self,
        image_size: int = 448,
        mode: str | None = None,
        *,
        generation: int | str = 2,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        size: int | tuple[int, int] | None = None,
        crop_size: tuple[int, int] | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        rescale_factor: float = RESCALE_FACTOR,
        resample: int = BICUBIC,
        do_resize: bool = True,
        do_center_crop: bool = True,
        do_rescale: bool = True,
        do_normalize: bool = True,
        exif: bool = True,
    ) -> None:
        self.generation = generation_number(generation)
        mode = default_mode(self.generation) if mode is None else mode
        if mode not in MODES:
            raise InputError(f"unknown image mode {mode!r}; choose one of: {', '.join(MODES)}")
        if int(image_size) <= 0:
            raise InputError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.mode = mode
        self.max_pixels = max_pixels
        self.size = self.image_size if size is None else size
        self.crop_size = crop_size
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)
        self.rescale_factor = float(rescale_factor)
        self.resample = int(resample)
        self.do_resize = do_resize
        self.do_center_crop = do_center_crop
        self.do_rescale = do_rescale
        self.do_normalize = do_normalize
        self.exif = exif

    def __repr__(self) -> str:
        return f"OwlImageProcessor(image_size={self.image_size}, mode={self.mode!r}, generation={self.generation})"

    @property
    def pad_color(self) -> tuple[int, ...]:
        """The ``pad`` background: ``int(255 * mean)`` per channel, as the official code."""
        return tuple(int(x * 255) for x in self.mean)

    # -- construction from a model folder --------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        *,
        mode: str | None = None,
        generation: int | str | None = None,
        image_size: int | None = None,
        **kwargs: Any,
    ) -> "OwlImageProcessor":
        """Settings from ``preprocessor_config.json`` (when present) and ``config.json``.

        The generation (for the default mode) and ``S`` come from ``config.json`` (official v1,
        official v2 or owlkit layout) unless given. An owlkit ``config.json`` may set
        ``image_aspect_ratio``; an official v2 one's is ignored, as the README/eval entry
        points ignore it.
        """
        folder = Path(folder)
        config = _read_json(folder / "config.json")
        pre = _read_json(folder / "preprocessor_config.json")
        if generation is None:
            generation = _generation_from_config(config)
        if mode is None and config.get("model_type") == "owlkit" and config.get("image_aspect_ratio"):
            mode = config["image_aspect_ratio"]
        vision_size = _vision_image_size(config)
        settings: dict[str, Any] = {}
        if pre:
            size = pre.get("size")
            if isinstance(size, dict):
                if "shortest_edge" in size:
                    settings["size"] = int(size["shortest_edge"])
                elif "height" in size and "width" in size:
                    settings["size"] = (int(size["height"]), int(size["width"]))
            elif isinstance(size, int):
                settings["size"] = size
            crop = pre.get("crop_size")
            if isinstance(crop, dict) and "height" in crop:
                settings["crop_size"] = (int(crop["height"]), int(crop["width"]))
            elif isinstance(crop, int):
                settings["crop_size"] = (crop, crop)
            for key, name in (("image_mean", "mean"), ("image_std", "std")):
                if pre.get(key) is not None:
                    settings[name] = tuple(pre[key])
            for key in ("rescale_factor", "resample", "do_resize", "do_center_crop", "do_rescale", "do_normalize"):
                if pre.get(key) is not None:
                    settings[key] = pre[key]
        if image_size is None:
            crop = settings.get("crop_size")
            image_size = vision_size or (crop[0] if crop else None)
            if image_size is None:
                size = settings.get("size")
                image_size = size if isinstance(size, int) else (size[0] if size else None)
        if image_size is None:
            image_size = 224 if generation_number(generation or 2) == 1 else 448
        settings.update(kwargs)
        return cls(image_size, mode, generation=generation or 2, **settings)

    # -- processing ---------------------------------------------------------------------------

    def to_square(self, image: Image.Image, mode: str | None = None) -> Image.Image:
        """The mode's pre-step (before the CLIP processor) on an RGB image."""
        mode = self.mode if mode is None else mode
        if mode == "resize":
            side = max(image.size)
            return pil_resize(image, (side, side), self.resample)
        if mode == "pad":
            return expand2square(image, self.pad_color)
        if mode == "stretch":
            return pil_resize(image, (self.image_size, self.image_size), self.resample)
        if mode == "crop":
            return image
        raise InputError(f"unknown image mode {mode!r}; choose one of: {', '.join(MODES)}")

    def preprocess_one(self, image: Any, mode: str | None = None) -> np.ndarray:
        """One image (any source :func:`load_image` accepts) -> [3, S, S] float32 numpy."""
        rgb = load_image(image, max_pixels=self.max_pixels, exif=self.exif)
        square = self.to_square(rgb, mode)
        return clip_preprocess(
            square,
            size=self.size,
            crop_size=self.crop_size,
            resample=self.resample,
            mean=self.mean,
            std=self.std,
            rescale_factor=self.rescale_factor,
            do_resize=self.do_resize,
            do_center_crop=self.do_center_crop,
            do_rescale=self.do_rescale,
            do_normalize=self.do_normalize,
        )

    def preprocess_numpy(self, images: Any, mode: str | None = None) -> np.ndarray:
        """Images -> [N, 3, S, S] float32 numpy (N = 0 gives an empty [0, 3, S, S] array)."""
        items = _as_list(images)
        if not items:
            return np.zeros((0, 3, self.image_size, self.image_size), dtype=np.float32)
        arrays = [self.preprocess_one(item, mode) for item in items]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise InputError(f"processed images differ in shape: {sorted(shapes)}; check size/crop_size")
        return np.stack(arrays)

    def __call__(self, images: Any, mode: str | None = None):
        """Images -> ``torch.Tensor`` [N, 3, S, S] float32."""
        import torch  # processing imports torch only when tensors are asked for

        return torch.from_numpy(self.preprocess_numpy(images, mode))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a ``preprocessor_config.json`` (CLIPImageProcessor layout)."""
        size = self.size
        crop = self.crop_size or ((size, size) if isinstance(size, int) else tuple(size))
        return {
            "crop_size": {"height": int(crop[0]), "width": int(crop[1])},
            "do_center_crop": self.do_center_crop,
            "do_convert_rgb": True,
            "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.mean),
            "image_processor_type": "CLIPImageProcessor",
            "image_std": list(self.std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": {"shortest_edge": size} if isinstance(size, int) else {"height": size[0], "width": size[1]},
        }

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``preprocessor_config.json`` into ``folder``."""
        path = Path(folder) / "preprocessor_config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


def _as_list(images: Any) -> list:
    if images is None:
        return []
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return [images] if images.ndim in (2, 3) else list(images)
    if isinstance(images, Iterable):
        return list(images)
    return [images]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read JSON ({first_line(exc)})") from None
    return data if isinstance(data, dict) else {}


def _generation_from_config(config: dict) -> int | None:
    model_type = str(config.get("model_type", ""))
    if model_type == "owlkit":
        return int(config.get("owl_version", 2))
    if model_type in ("mplug-owl", "mplug_owl"):
        return 1
    if model_type.startswith("mplug_owl2") or "visual_config" in config:
        return 2
    if "vision_config" in config and "visual_abstractor_config" in config:
        return 1
    return None


def _vision_image_size(config: dict) -> int | None:
    for path in (("vision_config",), ("visual_config", "visual_model")):
        node: Any = config
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("image_size"):
            return int(node["image_size"])
    return None
