"""Turn any product image input into an RGB `PIL.Image`, the one format the image processor is fed.

Product images arrive as whatever the data source holds: PIL images, numpy arrays, torch tensors, file paths,
raw bytes, file objects, or `datasets` image dicts (`{"bytes": ..., "path": ...}`). Sellers upload PNG cut-outs
with transparency, palette GIFs, CMYK JPEGs from print workflows, 16-bit scans and grayscale photos. Dropping
the alpha channel would turn a transparent cut-out's background black (or whatever colour its invisible pixels
happen to hold), so transparency is composited on white, the background of a product page. Images above
`MAX_IMAGE_PIXELS` are refused (a file is checked from its header, before decoding) so that a decompression bomb
fails its own row instead of exhausting memory.

Only the standard library, numpy, PIL and torch are imported: this file is copied next to a saved processor and
loaded as remote code.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch


ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, str, os.PathLike, bytes, bytearray, dict, None]

WHITE = (255, 255, 255)

MAX_IMAGE_PIXELS = 89_478_485
"""The most pixels (width x height) an image may have; larger ones are refused. It is PIL's default
`MAX_IMAGE_PIXELS` (the size at which PIL warns of a decompression bomb: a tiny file that decodes to gigabytes),
far above any product photo. Encoded images are checked from their header, before their pixels are decoded."""


class InvalidInputTypeError(TypeError, ValueError):
    """An argument of the wrong type. Both a `TypeError` (what it is) and a `ValueError` (what callers that
    validate user data catch), like numpy's `AxisError(ValueError, IndexError)`."""


def _where(argument: str, index: int | None) -> str:
    return f"`{argument}`" if index is None else f"`{argument}[{index}]`"


class _PixelLimitError(ValueError):
    """An image above `MAX_IMAGE_PIXELS`; kept apart from the `ValueError`s PIL raises for corrupt data."""


def _check_pixel_count(width: int, height: int, where: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise _PixelLimitError(
            f"{where}: the image is {width} x {height} = {width * height:,} pixels, more than the limit of "
            f"{MAX_IMAGE_PIXELS:,} (`make_hf.image_utils.MAX_IMAGE_PIXELS`); it may be a decompression bomb. "
            "Downscale it, or drop the row."
        )


def _composite_on_white(image: PIL.Image.Image) -> PIL.Image.Image:
    if image.mode == "La":  # PIL cannot convert premultiplied La directly
        luminance, alpha = image.split()
        image = PIL.Image.merge("RGBa", (luminance, luminance, luminance, alpha))
    rgba = image.convert("RGBA")
    background = PIL.Image.new("RGBA", rgba.size, WHITE + (255,))
    return PIL.Image.alpha_composite(background, rgba).convert("RGB")


def _rescale_to_uint8(array: np.ndarray, high: float) -> np.ndarray:
    return np.clip(np.rint(array.astype(np.float64) * (255.0 / high)), 0, 255).astype(np.uint8)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB.

    Transparency (RGBA, LA, PA, P with a transparent colour, RGBa, La) is composited on white; 16-bit and 32-bit
    integer images are scaled to 8 bits (I;16 by /257; I by its range: /257 when it exceeds 255); float images
    are read as [0, 1] when their maximum is <= 1, else [0, 255]; 1-bit, grayscale, CMYK, YCbCr, HSV and LAB
    are converted by PIL.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image)
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(image).astype(np.float64)
        high = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        gray = _rescale_to_uint8(np.clip(array, 0, high), high)
        return PIL.Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        high = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        gray = _rescale_to_uint8(np.clip(array, 0, high), high)
        return PIL.Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray, channels_first: bool, argument: str, index: int | None) -> PIL.Image.Image:
    """(H, W), (H, W, C) or (C, H, W) arrays with C in {1, 3, 4}; uint8, uint16, bool, other ints or floats."""
    where = _where(argument, index)
    if array.ndim == 3:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        if first and (channels_first or not last):
            array = np.moveaxis(array, 0, -1)
        elif not last:
            raise ValueError(
                f"{where}: cannot tell the channel axis of an array of shape {tuple(array.shape)}; expected "
                "(H, W), (H, W, C) or (C, H, W) with C in 1, 3 or 4."
            )
        if array.shape[-1] == 1:
            array = array[..., 0]
    elif array.ndim != 2:
        raise ValueError(
            f"{where}: an image array must have 2 or 3 dimensions, got shape {tuple(array.shape)}. "
            "Pass a batch as a list of images or a 4-D array/tensor to `images`."
        )
    if array.size == 0:
        raise ValueError(f"{where}: the image array is empty (shape {tuple(array.shape)}).")
    _check_pixel_count(array.shape[1], array.shape[0], where)

    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = _rescale_to_uint8(array, 65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            # Zeroing them would hide a broken upstream step; passing them on makes the loss NaN.
            raise ValueError(
                f"{where}: the float image has {int(array.size - finite.sum())} NaN or infinite value(s) of "
                f"{array.size}; fix the step that produced it, or drop the row."
            )
        array = array.astype(np.float64)
        high = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        array = _rescale_to_uint8(np.clip(array, 0, high), high)
    elif np.issubdtype(array.dtype, np.integer) and array.dtype != np.uint8:
        high = 65535.0 if array.max(initial=0) > 255 else 255.0
        array = _rescale_to_uint8(np.clip(array, 0, high), high)
    elif array.dtype != np.uint8:
        raise InvalidInputTypeError(f"{where}: unsupported image array dtype {array.dtype}.")

    array = np.ascontiguousarray(array)
    mode = {2: "L"}.get(array.ndim) or {3: "RGB", 4: "RGBA"}[array.shape[-1]]
    return PIL.Image.fromarray(array, mode=mode)


def _open(source: Any, description: str, argument: str, index: int | None) -> PIL.Image.Image:
    where = _where(argument, index)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(source)  # reads the header only
        bombs = [w for w in caught if issubclass(w.category, PIL.Image.DecompressionBombWarning)]
        for other in caught:
            if other not in bombs:
                warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
        try:
            _check_pixel_count(*image.size, where)
            if bombs:  # PIL's own limit was lowered below ours
                raise PIL.Image.DecompressionBombError(str(bombs[0].message))
        except (_PixelLimitError, PIL.Image.DecompressionBombError):
            image.close()
            raise
        image.load()
    except (FileNotFoundError, _PixelLimitError):
        raise
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(
            f"{where}: PIL refuses {description} as a possible decompression bomb ({error}) Downscale it, or drop "
            "the row."
        ) from error
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(
            f"{where}: cannot read {description} as an image ({error}). Check that it is a complete image file "
            "(JPEG, PNG, WebP, GIF, BMP, TIFF ...)."
        ) from error
    # Phone photos store their rotation in EXIF; without this they would reach the model sideways.
    return PIL.ImageOps.exif_transpose(image)


def load_image(image: ImageInput, argument: str = "images", index: int | None = None) -> PIL.Image.Image:
    """Load one image from any supported input and return it as an RGB `PIL.Image`.

    Args:
        image: a `PIL.Image`; a numpy array (H, W), (H, W, C) or (C, H, W); a torch tensor (C, H, W) or (H, W, C);
            a file path (`str` / `os.PathLike`); encoded bytes; a binary file object; or a `datasets` image dict
            with `"bytes"` and/or `"path"`. Float arrays are read as [0, 1] when their maximum is <= 1, else
            [0, 255] (NaN or infinite values are refused); uint16 as 16-bit.
        argument, index: where the image came from, for error messages (`images[3]: ...`).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: unreadable or corrupt image data, an array of an impossible shape or with NaN or infinite
            values, or an image of more than `MAX_IMAGE_PIXELS` pixels (an encoded one is refused from its header,
            before it is decoded).
        InvalidInputTypeError: an input of an unsupported type (a `TypeError` and a `ValueError`).
    """
    where = _where(argument, index)
    if isinstance(image, PIL.Image.Image):
        _check_pixel_count(*image.size, where)
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.dtype == torch.bfloat16 or array.dtype == torch.float16:
            array = array.float()
        return to_rgb(_array_to_pil(array.numpy(), channels_first=True, argument=argument, index=index))
    if isinstance(image, np.ndarray):
        return to_rgb(_array_to_pil(image, channels_first=False, argument=argument, index=index))
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if path.startswith(("http://", "https://")):
            raise ValueError(
                f"{where}: {path!r} is a URL; this processor does not download. Download the image first and pass "
                "the local path, bytes or a PIL image."
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: no image file at {path!r}.")
        return to_rgb(_open(path, f"the file {path!r}", argument, index))
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise ValueError(f"{where}: the image bytes are empty.")
        return to_rgb(_open(io.BytesIO(bytes(image)), f"{len(image)} bytes", argument, index))
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        if image.get("bytes") is not None:
            return load_image(image["bytes"], argument, index)
        if image.get("path") is not None:
            return load_image(image["path"], argument, index)
        raise ValueError(f"{where}: the image dict has neither 'bytes' nor 'path'.")
    if hasattr(image, "read"):
        return to_rgb(_open(image, "the file object", argument, index))
    raise InvalidInputTypeError(
        f"{where}: unsupported image type {type(image).__name__}. Pass a PIL image, a numpy array, a torch tensor, "
        "a file path, bytes, or None for a product without an image."
    )


def is_single_image(images: Any) -> bool:
    """Whether `images` is one image (rather than a batch: a list/tuple, or a 4-D array/tensor)."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return images.ndim in (2, 3)
    return not isinstance(images, (list, tuple))


def load_images(images: Any, argument: str = "images") -> list[PIL.Image.Image | None]:
    """Load a batch: one image, a list/tuple of images (`None` = no image), or a 4-D array/tensor (B, ...).

    Returns a list of RGB images, with `None` kept where the product has no image.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        return [load_image(images[i], argument, i) for i in range(images.shape[0])]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim not in (2, 3):
        raise ValueError(
            f"`{argument}`: an image array/tensor must have 2, 3 (one image) or 4 (a batch) dimensions, got shape "
            f"{tuple(images.shape)}."
        )
    if is_single_image(images):
        return [load_image(images, argument, None)] if images is not None else [None]
    batch: Sequence[Any] = images
    return [None if image is None else load_image(image, argument, i) for i, image in enumerate(batch)]


__all__ = [
    "MAX_IMAGE_PIXELS", "ImageInput", "InvalidInputTypeError", "is_single_image", "load_image", "load_images", "to_rgb"
]
