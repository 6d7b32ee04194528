"""Pull the uploaded image bytes out of a request, whichever of the three accepted shapes it uses.

multipart `file` parts (one or several), a raw `image/*` body, or JSON `{"image": b64}` / `{"images": [b64, ...]}`.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from flask import Request

from serving.errors import ApiError


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise ApiError(400, "bad_base64", f"{name} must be a base64 string")
    if value.startswith("data:") and "," in value:  # accept data URLs as browsers produce them
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"{name} is not valid base64") from None


def _json_body(request: Request) -> object:
    """The parsed body; nesting deeper than the interpreter's recursion limit is a client error like any other."""
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ApiError(400, "bad_json", f"the body is not usable JSON: {reason}") from None


def _from_json(request: Request, max_files: int) -> list[Upload]:
    body = _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", 'body must be a JSON object like {"image": "<base64>"}')
    if "image" in body:
        return [Upload("image", _b64(body["image"], "image"))]
    if isinstance(body.get("images"), list):
        images = body["images"]
        _check_count(len(images), max_files)  # before decoding any of them
        return [Upload(f"images[{i}]", _b64(v, f"images[{i}]")) for i, v in enumerate(images)]
    raise ApiError(400, "missing_file", 'JSON body needs an "image" (base64) or "images" (list of base64) field')


def _from_multipart(request: Request, field: str) -> list[Upload]:
    parts = request.files.getlist(field)
    if not parts:
        others = sorted(set(request.files.keys()))
        hint = f"; got file field(s) {others}" if others else ""
        raise ApiError(400, "missing_file", f'no "{field}" part in the form (use -F "{field}=@leaf.jpg"){hint}')
    return [Upload(part.filename or field, part.read()) for part in parts]


def read_uploads(request: Request, max_files: int, field: str = "file") -> list[Upload]:
    """Return the uploads in request order; raise `ApiError` for any shape we can't use."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        uploads = _from_multipart(request, field)
    elif mimetype.startswith("image/"):
        uploads = [Upload("body", request.get_data(cache=False))]
    elif mimetype == "application/json":
        uploads = _from_json(request, max_files)
    elif not mimetype and not request.content_length:
        raise ApiError(400, "missing_file", f'send an image: multipart field "{field}", an image/* body or JSON base64')
    else:
        raise ApiError(
            415, "unsupported_media_type",
            f"Content-Type {mimetype!r} is not accepted; use multipart/form-data, image/* or application/json",
        )
    if not uploads:
        raise ApiError(400, "missing_file", "no image in the request")
    _check_count(len(uploads), max_files)
    return uploads


def _check_count(count: int, max_files: int) -> None:
    if count > max_files:
        raise ApiError(400, "too_many_files", f"{count} images sent; at most {max_files} per request")
