"""The files of a job request: many multipart `file` parts, or one zip/tar archive (a multipart `archive` part or
the whole body as application/zip, application/x-tar or application/gzip).

Counts and sizes are checked before anything is read out of an archive: a job over the per-job image limit gets
413 naming the limit, and an archive whose members add up to more than the body limit is refused (zip bombs).
Hidden files, folders and macOS resource forks inside archives are skipped.
"""
from __future__ import annotations

import io
import tarfile
import zipfile
from dataclasses import dataclass

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from serving.errors import ApiError

ARCHIVE_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-tar", "application/gzip",
                 "application/x-gzip", "application/x-gtar")


@dataclass(frozen=True)
class JobFile:
    name: str
    data: bytes


def too_many(limit: int, count: int | None = None) -> ApiError:
    """413 naming the per-job limit (`count`: how many were sent, when known)."""
    sent = f"{count} images" if count is not None else f"more than {limit} images"
    return ApiError(413, "too_many_images", f"the job has {sent}; the limit is {limit} images per job")


def read_job_files(request: Request, max_images: int, max_bytes: int) -> list[JobFile]:
    """The request's images in upload (or archive) order; ApiError for anything unusable as a whole."""
    request.max_content_length = max_bytes
    request.max_form_parts = max_images + 1  # one more: a job just over the limit is counted, then refused by name
    request.max_form_memory_size = 64 * 1024  # no text field is expected
    mimetype = request.mimetype or ""
    if mimetype in ARCHIVE_TYPES:
        return archive_members(request.get_data(cache=False), max_images, max_bytes)
    if mimetype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", f"Content-Type {mimetype!r} is not accepted; send multipart/"
                       'form-data with "file" parts (or one "archive" part), or a zip/tar body')
    try:
        parts = request.files
    except RequestEntityTooLarge as exc:
        if "parts" in str(exc.description):
            raise too_many(max_images) from None  # the parser stopped counting at the limit
        raise
    if "archive" in parts:
        if len(parts.getlist("archive")) > 1 or "file" in parts:
            raise ApiError(400, "bad_request", 'send either "file" parts or one "archive" part, not both')
        return archive_members(parts["archive"].read(), max_images, max_bytes)
    files = parts.getlist("file")
    if not files:
        raise ApiError(400, "missing_file", 'no "file" parts and no "archive" part (use -F "file=@leaf.jpg" '
                       'once per photo, or -F "archive=@photos.zip")')
    if len(files) > max_images:
        raise too_many(max_images, len(files))
    return [JobFile(f.filename or f"file{i}", f.read()) for i, f in enumerate(files)]


def _wanted(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts if p)


def archive_members(data: bytes, max_images: int, max_bytes: int) -> list[JobFile]:
    """Regular files of a zip or (compressed) tar archive, sorted by name."""
    if not data:
        raise ApiError(400, "empty_file", "the archive is empty")
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir() and _wanted(m.filename)]
                _check(len(members), sum(m.file_size for m in members), max_images, max_bytes)
                return [JobFile(m.filename, archive.read(m)) for m in sorted(members, key=lambda m: m.filename)]
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
            raise ApiError(400, "bad_archive", f"the zip archive is damaged: {exc}") from None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            members = [m for m in archive.getmembers() if m.isfile() and _wanted(m.name)]
            _check(len(members), sum(m.size for m in members), max_images, max_bytes)
            return [JobFile(m.name, archive.extractfile(m).read()) for m in sorted(members, key=lambda m: m.name)]
    except tarfile.TarError as exc:
        raise ApiError(415, "not_an_archive", f"the archive is neither zip nor tar ({exc})") from None
    except (OSError, EOFError) as exc:  # a compressed stream cut short
        raise ApiError(400, "bad_archive", f"the tar archive is damaged: {exc}") from None


def _check(count: int, size: int, max_images: int, max_bytes: int) -> None:
    if count == 0:
        raise ApiError(400, "missing_file", "the archive holds no files")
    if count > max_images:
        raise too_many(max_images, count)
    if size > max_bytes:
        raise ApiError(413, "payload_too_large", f"the archive unpacks to {size:,} bytes; the limit is {max_bytes:,}")
