"""The hostile requests of issue 15, built in memory: tiny files that cost a lot to decode, and odd bodies.

Each `HostileRequest` says how to send itself (`send(url)`); bench/hostile.py sends them to a live server and
records the status, the time and what the worker processes' memory did.
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import requests
from PIL import Image


def png(width: int, height: int, bit_depth: int = 8, color_type: int = 2, row_bytes: int | None = None) -> bytes:
    """A valid all-black PNG of any size, compressed row by row (a 50,000,000 x 1 image is ~50 KB)."""
    channels = {0: 1, 2: 3}[color_type]
    row_bytes = row_bytes or (width * channels * bit_depth + 7) // 8
    compressor, data = zlib.compressobj(9), bytearray()
    row = b"\0" * (1 + row_bytes)
    for _ in range(height):
        data += compressor.compress(row)
    data += compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(data)) + chunk(b"IEND", b"")


def tiff_tile_bomb(tile: int = 16_384) -> bytes:
    """A 1 x 1 grey TIFF whose single deflate tile is tile x tile pixels (the decoder inflates the whole tile)."""
    compressor = zlib.compressobj(9)
    block = b"\0" * (1 << 20)
    data = bytearray()
    for _ in range(tile * tile // len(block)):
        data += compressor.compress(block)
    data += compressor.flush()
    entries = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, 1), (257, 4, 1, 1), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1), (277, 3, 1, 1),
        (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, 0), (325, 4, 1, len(data)),
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = data_offset if tag == 324 else value
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                         else struct.pack("<I", value))
    return b"II*\0" + struct.pack("<I", ifd_offset) + ifd + b"\0\0\0\0" + bytes(data)


def jpeg_with_bad_exif() -> bytes:
    """A real JPEG whose EXIF block claims more IFD entries than it holds."""
    buf = io.BytesIO()
    exif = b"Exif\0\0II*\0\x08\0\0\0\x30\0\x12\x01\x03\0\x01\0\0\0\x06"
    Image.new("RGB", (64, 64), (40, 120, 40)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


@dataclass
class HostileRequest:
    name: str
    what: str
    send: Callable[[str], requests.Response]  # base URL -> response
    tags: list[str] = field(default_factory=list)


def _file(name: str, data: bytes, filename: str = "x") -> Callable[[str], requests.Response]:
    return lambda url: requests.post(f"{url}/predict", files={"file": (filename, data)}, timeout=120)


def _raw(data: bytes, content_type: str) -> Callable[[str], requests.Response]:
    return lambda url: requests.post(f"{url}/predict", data=data, headers={"Content-Type": content_type},
                                     timeout=120)


def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"\xff" * min(size, total - sent)
        sent += size


def hostile_requests() -> list[HostileRequest]:
    deep = b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    many = b'{"images": [' + b",".join([b'"QQ=="'] * 1_000_000) + b"]}"
    return [
        HostileRequest("wide_png", "30,000 x 1 PNG (tiny file, huge resize)", _file("wide", png(30_000, 1))),
        HostileRequest("very_wide_png", "50,000,000 x 1 PNG", _file("very_wide", png(50_000_000, 1, 8, 0))),
        HostileRequest("png16", "7,000 x 7,000 16-bit grey PNG", _file("png16", png(7_000, 7_000, 16, 0))),
        HostileRequest("tiff_tile", "1 x 1 TIFF with one 16,384^2 deflate tile", _file("tiff", tiff_tile_bomb())),
        HostileRequest("bad_exif", "JPEG with a malformed EXIF block", _file("exif", jpeg_with_bad_exif())),
        HostileRequest("deep_json", "JSON nested 100,000 deep", _raw(deep, "application/json")),
        HostileRequest("many_images", "JSON list of 1,000,000 base64 images", _raw(many, "application/json")),
        HostileRequest("big_text_field", "multipart with a 600 KB text field",
                       lambda url: requests.post(f"{url}/predict", files={"file": ("a.png", png(32, 32))},
                                                 data={"note": "x" * 600_000}, timeout=120)),
        HostileRequest("long_filename", "multipart file part with a 5,000-character filename",
                       _file("long", png(32, 32), filename="a" * 5_000 + ".png")),
        HostileRequest("chunked_over_limit", "chunked image/jpeg body of 21 MiB",
                       lambda url: requests.post(f"{url}/predict", data=_chunks(21 << 20),
                                                 headers={"Content-Type": "image/jpeg"}, timeout=120)),
    ]


def describe(response: requests.Response) -> str:
    try:
        body = json.loads(response.content)
        return f"{response.status_code} {body['error']['code'] if 'error' in body else 'ok'}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {'json' if response.headers.get('content-type') == 'application/json' else 'not json'}"
