"""Turn untrusted upload bytes into an RGB PIL image, or fail with a clear `InvalidImage`.

Pillow trusts headers and decodes lazily, so every check happens here: allowed formats, a pixel
budget checked before decoding, reduced-scale JPEG decoding for phone photos, EXIF orientation,
and conversion of every mode to 8-bit RGB.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # camera MPO files open as JPEG
DEFAULT_MAX_PIXELS = 50_000_000  # a 48-MP phone photo passes, a decompression bomb does not
DEFAULT_DRAFT_SIDE = 320  # JPEGs are decoded at the smallest 1/2^k scale that keeps this many pixels per side

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, never half a grey picture


class InvalidImage(ValueError):
    """The bytes are not a usable image; `code` is a stable machine-readable reason."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is flattened onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and arr.max() > 255:  # 16-bit samples: keep the high byte (as libpng's strip_16 does), exact
            arr = np.floor(arr / 256.0)  # for both usual 8 -> 16 bit expansions, v * 256 and v * 257
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_side: int | None = DEFAULT_DRAFT_SIDE,
) -> Image.Image:
    """Decode one uploaded file (first frame for GIF/TIFF) into an upright RGB image.

    Raises `InvalidImage` for empty, non-image, unsupported, oversized or truncated input.
    """
    if not data:
        raise InvalidImage("the file is empty", "empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImage(
            "the file is not a supported image (send JPEG, PNG, WebP, BMP, TIFF or GIF)", "not_an_image"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image is too large: {exc}", "image_too_large") from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise InvalidImage(f"cannot read the image header: {exc}", "not_an_image") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage("image has no pixels", "not_an_image")
    if width * height > max_pixels:
        raise InvalidImage(
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP; the limit is {max_pixels / 1e6:.0f} MP",
            "image_too_large",
        )
    try:
        if draft_side and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (draft_side, draft_side))
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc) or type(exc).__name__
        code = "truncated_image" if "truncated" in message or isinstance(exc, EOFError) else "corrupt_image"
        raise InvalidImage(f"the image data is damaged or incomplete: {message}", code) from None
