"""One error type and one JSON shape, `{"error": {"code", "message"}}`, for every failure."""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


# HTTP status for each `InvalidImage.code` raised by inference.decode_image.
IMAGE_ERROR_STATUS = {
    "empty_file": 400,
    "not_an_image": 415,
    "truncated_image": 400,
    "corrupt_image": 400,
    "bad_aspect_ratio": 400,
    "image_too_large": 413,
}
