"""Schemathesis hooks for tests/test_openapi_fuzz.py (loaded through SCHEMATHESIS_HOOKS=schemathesis_hooks).

A JSON schema can say "bytes" or "base64" but not "a photo": random bytes are rightly refused with 415
not_an_image, which schemathesis would then call a schema-valid request rejected. So the image formats draw from
real leaf photos (the samples, shrunk to keep requests small), in JPEG and PNG, and job archives are a zip and a
tar of them; everything else, and every schema-invalid request of the negative mode, is generated as usual.
"""
from __future__ import annotations

import base64
import io
import tarfile
import zipfile
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


def _archives() -> list[bytes]:
    """A zip and a tar.gz of two leaves: the job API's "archive" format (jobs/openapi.py)."""
    zipped, tarred = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        for i, data in enumerate(LEAVES[:2]):
            archive.writestr(f"leaf{i}.jpg", data)
    with tarfile.open(fileobj=tarred, mode="w:gz") as archive:
        for i, data in enumerate(LEAVES[:2]):
            info = tarfile.TarInfo(f"leaf{i}.jpg")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return [zipped.getvalue(), tarred.getvalue()]


schemathesis.openapi.format("archive", st.sampled_from(_archives()))
