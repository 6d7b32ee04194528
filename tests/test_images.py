"""decode_image: every accepted format and mode becomes upright RGB; every bad input is a clear InvalidImage."""
from __future__ import annotations

import pytest
from support import encode, png_header_bomb, sample_files
from PIL import Image

from inference import InvalidImage, decode_image


@pytest.fixture(scope="module")
def leaf() -> Image.Image:
    return Image.open(sample_files()[0]).convert("RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_accepted_formats_decode_to_rgb(leaf, fmt):
    img = decode_image(encode(leaf, fmt))
    assert img.mode == "RGB"
    assert img.size == leaf.size


def test_gif_uses_first_frame(leaf):
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue])
    assert decode_image(data).getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(leaf, mode):
    if mode == "I;16":
        img = leaf.convert("L").point(lambda v: v * 256, "I").convert("I;16")
        data = encode(img, "PNG")
    else:
        data = encode(leaf.convert(mode), "TIFF" if mode == "CMYK" else "PNG")
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == leaf.size
    grey_in = leaf.convert("L").resize((16, 16))
    grey_out = out.convert("L").resize((16, 16))
    diff = sum(abs(a - b) for a, b in zip(grey_in.getdata(), grey_out.getdata())) / 256
    tolerance = 25 if mode in ("P", "CMYK") else 3  # palette quantisation / naive CMYK shift the tones a bit
    assert diff < tolerance, f"{mode}: mean grey difference {diff:.1f}"


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert decode_image(encode(img, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(leaf):
    wide = leaf.resize((200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(wide, "JPEG", exif=exif.tobytes()))
    assert out.size == (100, 200)


def test_big_jpeg_is_decoded_at_reduced_scale(leaf):
    big = leaf.resize((4000, 3000))
    out = decode_image(encode(big, "JPEG", quality=85))
    assert out.size[0] < 4000 and min(out.size) >= 320  # draft mode: 1/2^k scale, never below the draft side


def _truncated_jpeg() -> bytes:
    data = sample_files()[0].read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data, code, words",
    [
        (b"", "empty_file", "empty"),
        (b"hello, this is text and not a picture", "not_an_image", "not a supported image"),
        (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "not_an_image", "not a supported image"),
        (_truncated_jpeg(), "truncated_image", "damaged or incomplete"),
        (png_header_bomb(), "image_too_large", "limit"),
        (encode(Image.new("RGB", (16, 16)), "ICO"), "not_an_image", "not a supported image"),
    ],
    ids=["empty", "text", "pdf", "truncated", "bomb", "unsupported-format"],
)
def test_bad_input_raises_invalid_image(data, code, words):
    with pytest.raises(InvalidImage) as info:
        decode_image(data)
    assert info.value.code == code
    assert words in str(info.value)


def test_pixel_limit_is_configurable(leaf):
    with pytest.raises(InvalidImage, match="limit"):
        decode_image(encode(leaf, "PNG"), max_pixels=1000)
    assert decode_image(encode(leaf, "PNG"), max_pixels=leaf.width * leaf.height).size == leaf.size


def test_truncated_png_is_refused(leaf):
    data = encode(leaf, "PNG")
    with pytest.raises(InvalidImage):
        decode_image(data[: len(data) - 200])
