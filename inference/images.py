"""Turn untrusted upload bytes into an RGB PIL image, or fail with a clear `InvalidImage`.

Pillow trusts headers and decodes lazily, so every check happens here, before any pixel is decoded: allowed
formats, one pixel budget (ours, the configured one), an aspect-ratio bound and a TIFF tile layout that fits the
image. Then the work is bounded by what the model needs: JPEGs decode at a reduced scale, every other image is
box-reduced to about the same size right after decoding, so orientation, mode conversion and the resize only ever
see a small image. Whatever still goes wrong while decoding is the file's fault: one catch at this module's
boundary turns it into `InvalidImage`, never a server error.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # camera MPO files open as JPEG
DEFAULT_MAX_PIXELS = 50_000_000  # a 48-MP phone photo passes, a decompression bomb does not
DEFAULT_DRAFT_SIDE = 320  # images are decoded (JPEG) or box-reduced (others) to about this short side, never below
MAX_ASPECT_RATIO = 20  # long side / short side: wider than any panorama; a 50,000,000 x 1 "image" asks 3.8 TB to resize
TIFF_MIN_TILE_ALLOWANCE = 1024  # tiles may overhang a small image up to this side (writers use 256 or 512 tiles)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload is an error, never half a grey picture
# Pillow's own bomb check (a warning above 89.5 MP, an error above 179 MP) would fire before ours and quote its
# number, not the configured limit; every upload passes through `decode_image`, which checks the configured
# budget right after reading the header.
Image.MAX_IMAGE_PIXELS = None

HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class InvalidImage(ValueError):
    """The bytes are not a usable image; `code` is a stable machine-readable reason."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


def _open(data: bytes) -> Image.Image:
    """Read the header only; no pixel is decoded yet."""
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImage(
            "the file is not a supported image (send JPEG, PNG, WebP, BMP, TIFF or GIF)", "not_an_image"
        ) from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise InvalidImage(f"cannot read the image header: {exc}", "not_an_image") from None


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _check_tiff_tiles(img: Image.Image, max_pixels: int) -> None:
    """A tile is decoded whole: a 1-pixel TIFF with one 16,384^2 tile costs 770 MB. Tiles must fit the image."""
    tags = getattr(img, "tag_v2", None)
    if tags is None or (322 not in tags and 323 not in tags):  # TileWidth, TileLength
        return
    tile_width, tile_height = int(tags.get(322, 0)), int(tags.get(323, 0))
    width, height = img.size
    fits = (0 < tile_width <= max(_round_up(width, 16), TIFF_MIN_TILE_ALLOWANCE)
            and 0 < tile_height <= max(_round_up(height, 16), TIFF_MIN_TILE_ALLOWANCE))
    if not fits or tile_width * tile_height > max_pixels:
        raise InvalidImage(f"TIFF tiles of {tile_width}x{tile_height} pixels do not fit a {width}x{height} image",
                           "corrupt_image")


def _check_geometry(img: Image.Image, max_pixels: int) -> None:
    """Refuse, from the header alone, anything whose decoding or resizing would cost more than a real photo."""
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage("image has no pixels", "not_an_image")
    if width * height > max_pixels:
        raise InvalidImage(f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}",
                           "image_too_large")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidImage(f"image is {width}x{height}: one side is more than {MAX_ASPECT_RATIO} times the other, "
                           "no leaf photo has that shape", "bad_aspect_ratio")
    if img.format == "TIFF":
        _check_tiff_tiles(img, max_pixels)


def _reduce(img: Image.Image, short_side: int) -> Image.Image:
    """Integer box reduction that keeps the short side at `short_side` or more (what JPEG's draft does)."""
    factor = min(img.size) // short_side
    if factor < 2:
        return img
    size = (img.width // factor, img.height // factor)
    if img.mode in ("1", "P", "PA"):  # palette indices must not be averaged
        return img.resize(size, Image.Resampling.NEAREST)
    if img.mode.startswith("I;16"):  # Image.reduce has no 16-bit kernel; resize's box filter does
        return img.resize(size, Image.Resampling.BOX)
    return img.reduce(factor)


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit or float samples -> 8-bit grey in the samples' own dtype (no float64 copies).

    16-bit samples keep their high byte (as libpng's strip_16 does), exact for both usual 8 -> 16 bit
    expansions, v * 256 and v * 257; values that already fit 8 bits are kept."""
    samples = np.array(img)
    if samples.dtype.kind == "f":
        samples = np.nan_to_num(samples, nan=0.0, posinf=65535.0, neginf=0.0)
        if samples.size and samples.max() > 255:
            np.floor_divide(samples, 256, out=samples)
        samples = np.rint(samples, out=samples)
    elif samples.size and samples.max() > 255:
        np.right_shift(samples, 8, out=samples)
    return Image.fromarray(np.clip(samples, 0, 255).astype(np.uint8), "L")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is flattened onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in HIGH_DEPTH_MODES:
        return _high_depth_to_l(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _decode(img: Image.Image, draft_side: int | None) -> Image.Image:
    """Pixels, reduced to what the model needs, upright, in RGB.

    The EXIF orientation is read before the reduction (a reduced image no longer carries a TIFF's tags) and applied
    with a plain transpose: `ImageOps.exif_transpose` also rewrites the EXIF block, which raises on malformed tags
    that do not matter here, and copies the full-size image even when nothing turns."""
    if draft_side and img.format in ("JPEG", "MPO"):
        img.draft("RGB", (draft_side, draft_side))
    img.load()
    orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
    if draft_side:
        img = _reduce(img, draft_side)
    img = _to_rgb(img)
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation) if isinstance(orientation, int) else None
    return img.transpose(transpose) if transpose is not None else img


def _damaged(exc: Exception) -> InvalidImage:
    message = str(exc) or type(exc).__name__
    code = "truncated_image" if "truncated" in message or isinstance(exc, EOFError) else "corrupt_image"
    return InvalidImage(f"the image data is damaged or incomplete: {message}", code)


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_side: int | None = DEFAULT_DRAFT_SIDE,
) -> Image.Image:
    """Decode one uploaded file (first frame for GIF/TIFF) into an upright RGB image.

    `max_pixels` is the only pixel limit (Pillow's own is off); `draft_side=None` decodes at full size.
    Raises `InvalidImage` for empty, non-image, unsupported, oversized, oddly shaped, truncated or damaged input.
    """
    if not data:
        raise InvalidImage("the file is empty", "empty_file")
    img = _open(data)
    try:
        _check_geometry(img, max_pixels)
        return _decode(img, draft_side)
    except InvalidImage:
        raise
    except Exception as exc:  # any failure inside Pillow or numpy on an upload is a bad file, not a server error
        raise _damaged(exc) from None
