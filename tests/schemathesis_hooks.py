"""Schemathesis hooks for tests/test_openapi_fuzz.py (loaded through SCHEMATHESIS_HOOKS=schemathesis_hooks).

A JSON schema can say "bytes" or "base64" but not "a photo": random bytes are rightly refused with 415
not_an_image, which schemathesis would then call a schema-valid request rejected. So the image formats draw from
real leaf photos (the samples, shrunk to keep requests small), in JPEG and PNG; everything else, and every
schema-invalid request of the negative mode, is generated as usual.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import schemathesis
from hypothesis import strategies as st
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "inference_image"


def _leaf_images() -> list[bytes]:
    images = []
    for path in sorted(SAMPLES.glob("*.jpg"))[:4]:
        with Image.open(path) as img:
            small = img.convert("RGB").resize((96, 96))
        for fmt in ("JPEG", "PNG"):
            buf = io.BytesIO()
            small.save(buf, fmt)
            images.append(buf.getvalue())
    return images


LEAVES = _leaf_images()
schemathesis.openapi.format("binary", st.sampled_from(LEAVES))
schemathesis.openapi.format("byte", st.sampled_from([base64.b64encode(b).decode() for b in LEAVES]))
