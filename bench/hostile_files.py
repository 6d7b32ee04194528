"""Small files that cost a naive decoder far more than their size (issue 15), built byte by byte.

One definition for the regression tests (built small) and the measuring script `bench/hostile_inputs.py` (built at
the sizes the issue reported). Zero pixels compress about 1000:1, so even the big ones are a few hundred KB; they
are compressed in pieces so that building one never holds its decoded size in memory.
"""
from __future__ import annotations

import io
import struct
import zlib
from typing import Iterable

from PIL import Image

PIECE = 1 << 20  # bytes of zeros fed to zlib at a time


def _deflate_zeros(total: int, row_bytes: int | None = None) -> bytes:
    """zlib stream of `total` zero bytes; with `row_bytes`, a PNG filter byte (0) leads every row of that size."""
    packer = zlib.compressobj(9)
    out = []
    if row_bytes is None:
        for start in range(0, total, PIECE):
            out.append(packer.compress(bytes(min(PIECE, total - start))))
    else:
        rows = total // row_bytes
        for _ in range(rows):
            for start in range(0, row_bytes, PIECE):
                out.append(packer.compress(bytes(min(PIECE, row_bytes - start))))
    out.append(packer.flush())
    return b"".join(out)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, bit_depth: int = 8, colour_type: int = 2, idat: bytes | None = None) -> bytes:
    """A valid PNG of all-zero pixels (or with the given IDAT); colour type 0 = grey, 2 = RGB."""
    channels = {0: 1, 2: 3}[colour_type]
    row = 1 + width * channels * bit_depth // 8
    if idat is None:
        idat = _deflate_zeros(row * height, row)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def wide_png(width: int, height: int = 1) -> bytes:
    """Item 1: a line of pixels, e.g. 30,000 x 1 (169 bytes) or 50,000,000 x 1 (146 KB)."""
    return png(width, height)


def png16(side: int) -> bytes:
    """Item 3: a 16-bit greyscale square, e.g. 7,000 x 7,000 (111 KB)."""
    return png(side, side, bit_depth=16, colour_type=0)


# TIFF field types
SHORT, LONG, RATIONAL = 3, 4, 5
_TYPE_FORMAT = {SHORT: "H", LONG: "I", RATIONAL: "II"}


def tiff(entries: Iterable[tuple[int, int, list]], data: bytes) -> bytes:
    """Little-endian TIFF with one IFD; `data` is placed right after the header and `entries` are (tag, type,
    values) with offsets relative to the file start (data starts at byte 8)."""
    entries = sorted(entries)
    ifd_offset = 8 + len(data) + (len(data) & 1)
    extra_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd, extra = [struct.pack("<H", len(entries))], []
    for tag, kind, values in entries:
        flat = [v for pair in values for v in pair] if kind == RATIONAL else list(values)
        packed = struct.pack("<" + _TYPE_FORMAT[kind][0] * len(flat), *flat)
        if len(packed) <= 4:
            field = packed.ljust(4, b"\0")
        else:
            field = struct.pack("<I", extra_offset + sum(map(len, extra)))
            extra.append(packed)
        ifd.append(struct.pack("<HHI", tag, kind, len(values)) + field)
    ifd.append(b"\0\0\0\0")
    return b"II*\0" + struct.pack("<I", ifd_offset) + data + b"\0" * (len(data) & 1) + b"".join(ifd + extra)


def _rgb_tags(width: int, height: int, compression: int) -> list[tuple[int, int, list]]:
    return [(256, LONG, [width]), (257, LONG, [height]), (258, SHORT, [8, 8, 8]), (259, SHORT, [compression]),
            (262, SHORT, [2]), (277, SHORT, [3]), (284, SHORT, [1])]


def tiled_tiff(width: int, height: int, tile_width: int, tile_height: int | None = None) -> bytes:
    """Deflate-compressed tiled RGB TIFF of zero pixels. Item 2: `tiled_tiff(1, 1, 16384)` is a 1-pixel image
    whose single tile decodes to 16,384^2 pixels (783 KB)."""
    tile_height = tile_height or tile_width
    across, down = -(-width // tile_width), -(-height // tile_height)
    tile = _deflate_zeros(tile_width * tile_height * 3)
    count = across * down
    offsets = [8 + i * len(tile) for i in range(count)]
    return tiff(_rgb_tags(width, height, 8) + [(322, LONG, [tile_width]), (323, LONG, [tile_height]),
                                               (324, LONG, offsets), (325, LONG, [len(tile)] * count)],
                tile * count)


def tiff_rational_strip_offsets() -> bytes:
    """Item 4: an uncompressed 2 x 2 TIFF whose StripOffsets are RATIONALs (Pillow: TypeError)."""
    pixels = bytes(12)
    return tiff(_rgb_tags(2, 2, 1) + [(273, RATIONAL, [(8, 1)]), (278, LONG, [2]), (279, LONG, [len(pixels)])],
                pixels)


def bad_exif() -> bytes:
    """EXIF (TIFF layout) with Orientation 6 and an ImageDescription stored as a RATIONAL: reading it works,
    but rewriting it after the rotation (`ImageOps.exif_transpose`) raises inside Pillow."""
    return tiff([(0x0112, SHORT, [6]), (0x010E, RATIONAL, [(1, 0)])], b"")


def jpeg_with_bad_exif(size: tuple[int, int] = (32, 16)) -> bytes:
    """Item 4: a valid JPEG carrying `bad_exif()` in its APP1 segment."""
    buf = io.BytesIO()
    Image.new("RGB", size, (40, 120, 40)).save(buf, "JPEG", exif=b"Exif\0\0" + bad_exif())
    return buf.getvalue()


def webp_with_bad_exif(size: tuple[int, int] = (32, 16)) -> bytes:
    """Item 4: a valid WebP carrying `bad_exif()` in its EXIF chunk."""
    buf = io.BytesIO()
    Image.new("RGB", size, (40, 120, 40)).save(buf, "WEBP", exif=bad_exif())
    return buf.getvalue()


def seed_corpus() -> dict[str, bytes]:
    """Small valid files of every accepted format and the usual modes: the starting points for mutation."""
    from PIL import ImageDraw

    leaf = Image.new("RGB", (48, 32), (30, 110, 40))
    ImageDraw.Draw(leaf).ellipse((8, 4, 40, 28), fill=(150, 90, 30))
    exif = Image.Exif()
    exif[0x0112] = 6

    def save(img: Image.Image, fmt: str, **options) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **options)
        return buf.getvalue()

    return {
        "jpeg": save(leaf, "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg_progressive": save(leaf, "JPEG", progressive=True),
        "jpeg_cmyk": save(leaf.convert("CMYK"), "JPEG"),
        "png_rgb": save(leaf, "PNG"),
        "png_rgba": save(leaf.convert("RGBA"), "PNG"),
        "png_palette": save(leaf.convert("P"), "PNG", transparency=0),
        "png_16bit": save(leaf.convert("I;16"), "PNG"),
        "webp_lossy": save(leaf, "WEBP", quality=70, exif=exif.tobytes()),
        "webp_lossless": save(leaf.convert("RGBA"), "WEBP", lossless=True),
        "tiff_raw": save(leaf, "TIFF"),
        "tiff_deflate": save(leaf, "TIFF", compression="tiff_adobe_deflate"),
        "tiff_tiled": tiled_tiff(48, 32, 16),
        "gif": save(leaf.convert("P"), "GIF", save_all=True, append_images=[leaf.rotate(90).convert("P")]),
        "bmp": save(leaf, "BMP"),
    }


INTERESTING_VALUES = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)
MUTATIONS = ("flip", "overwrite", "interesting", "truncate", "insert", "delete", "duplicate")


def mutate(data: bytes, operations: Iterable[tuple[str, float, int, bytes]]) -> bytes:
    """Apply (kind, relative position 0..1, number, bytes) operations in order: the mutations a fuzzer makes to
    image files (bit flips, overwrites, interesting integers in header fields, cuts, insertions, repeats)."""
    out = bytearray(data)
    for kind, where, number, chunk in operations:
        pos = min(int(where * len(out)), max(len(out) - 1, 0))
        if kind == "flip" and out:
            out[pos] ^= 1 << (number % 8)
        elif kind == "overwrite":
            out[pos:pos + len(chunk)] = chunk
        elif kind == "interesting":
            width = (1, 2, 4)[number % 3]
            value = INTERESTING_VALUES[number % len(INTERESTING_VALUES)] & ((1 << 8 * width) - 1)
            out[pos:pos + width] = value.to_bytes(width, "big" if number % 2 else "little")
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = chunk
        elif kind == "delete":
            del out[pos:pos + 1 + number % 64]
        elif kind == "duplicate":
            out[pos:pos] = out[pos:pos + 1 + number % 256]
    return bytes(out)
