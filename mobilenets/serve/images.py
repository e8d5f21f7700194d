"""Images from clients, decoded safely: bytes in, the network's input out, or a 4xx naming the problem.

The header is read first, with Pillow's decoders restricted to ``FORMATS``: a body that is none of
them is a 415. The size it claims is checked before a pixel is decoded: over ``max_pixels`` (a
decompression bomb: a small PNG that claims 30000 x 30000) is a 413. Only then is the image
decoded, fully, by ``predict.load_image`` (EXIF orientation, RGB), so a truncated or corrupt file
is a 422 rather than a half-grey image, and preprocessed by ``data.transforms.eval_transform``:
exactly what ``mobilenets predict`` feeds the same model.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.preprocessing import Preprocessing
from ..data.transforms import eval_transform
from ..predict import load_image
from .protocol import ServeError

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")  # what clients may send; TIFF & co. are not decoded
MAX_PIXELS = 40_000_000  # the default limit: a 40-megapixel photo decodes to 120 MB of RGB


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The RGB image in ``data``; a ``ServeError`` (415 not an image, 413 too many pixels, 422
    truncated or corrupt) otherwise."""
    if not data:
        raise ServeError(400, "the body is empty: send an image", "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                width, height, fmt = *im.size, im.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ServeError(413, f"the image is too large to decode: {exc}", "too_many_pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ServeError(415, f"the body is not an image in a format this server decodes ({', '.join(FORMATS)})",
                         "not_an_image") from None
    if width * height > max_pixels:
        raise ServeError(413, f"the image claims {width} x {height} pixels, more than the limit of "
                         f"{max_pixels:,}", "too_many_pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return load_image(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 -- any decoder failure means an unreadable image
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ServeError(422, f"cannot decode the {fmt} image: {why}", "corrupt_image") from None


class ImageInput:
    """Bytes of an image -> the 1 x 3 x H x W float32 input of a model preprocessed by ``pre``."""

    def __init__(self, pre: Preprocessing, max_pixels: int = MAX_PIXELS):
        self.transform, self.max_pixels = eval_transform(pre), max_pixels

    def __call__(self, data: bytes) -> np.ndarray:
        return self.transform(decode(data, self.max_pixels)).numpy()[None]
