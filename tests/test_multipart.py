"""The python-multipart form parser must read every body exactly as Werkzeug's own parser does."""
from __future__ import annotations

import io

import pytest
from urllib3 import encode_multipart_formdata
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from serving.multipart import CHUNK_BYTES, FastFormDataParser

BIG = bytes(range(256)) * 4096  # 1 MiB: Werkzeug's default container would spill it to a temporary file


def parse(parser_class: type[FormDataParser], body: bytes, content_type: str, **limits) -> tuple[list, list]:
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    _, form, files = parser_class(**limits).parse_from_environ(environ)
    return (list(form.items(multi=True)),
            [(name, f.filename, f.mimetype, f.read()) for name, f in files.items(multi=True)])


BODIES = {
    "one file": {"file": ("leaf.jpg", b"\xff\xd8jpeg bytes\r\n--not a boundary\r\n", "image/jpeg")},
    "several files, one field": [("file", ("a.jpg", b"A" * 10, "image/jpeg")), ("file", ("b.png", b"B", "image/png"))],
    "fields and a file": [("correct_class", "Late_blight"), ("comment", "spots – brown, ünïcode"),
                          ("file", ("x.webp", b"RIFF....WEBP", "image/webp"))],
    "empty file and empty field": [("file", ("empty.jpg", b"", "image/jpeg")), ("comment", "")],
    "unicode file name": {"file": ("blatt-ä.jpg", b"data", "image/jpeg")},
    "big file": {"file": ("phone.jpg", BIG, "image/jpeg")},
    "parts across read steps": [("file", ("a.jpg", BIG + b"x" * 100, "image/jpeg")), ("comment", "between"),
                                ("file", ("b.jpg", BIG[:700_000], "image/jpeg"))],
}


@pytest.mark.parametrize("fields", BODIES.values(), ids=BODIES.keys())
def test_same_parts_as_werkzeug(fields):
    body, content_type = encode_multipart_formdata(fields)
    expected = parse(FormDataParser, body, content_type)
    assert expected[0] or expected[1]  # the reference really found something
    assert parse(FastFormDataParser, body, content_type) == expected


@pytest.mark.parametrize("body, content_type", [
    (b"garbage without any boundary", "multipart/form-data; boundary=abc"),
    (b"--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\nhalf a fi", 'multipart/form-data; boundary=abc'),
    (b"--abc\r\n\r\nno disposition\r\n--abc--\r\n", "multipart/form-data; boundary=abc"),
    (b"anything", "multipart/form-data"),  # no boundary parameter
], ids=["no-boundary-in-body", "truncated", "no-content-disposition", "no-boundary-parameter"])
def test_malformed_bodies_parse_as_an_empty_form(body, content_type):
    assert parse(FastFormDataParser, body, content_type) == ([], [])
    assert parse(FormDataParser, body, content_type) == ([], [])


@pytest.mark.parametrize("limits, fields", [
    ({"max_form_parts": 2}, [("file", ("a.jpg", b"1", "image/jpeg"))] * 3),
    ({"max_form_memory_size": 100}, {"comment": "x" * 101}),
], ids=["too-many-parts", "text-field-too-big"])
def test_limits_raise_413_like_werkzeug(limits, fields):
    body, content_type = encode_multipart_formdata(fields)
    for parser_class in (FormDataParser, FastFormDataParser):
        with pytest.raises(RequestEntityTooLarge):
            parse(parser_class, body, content_type, **limits)


def test_big_file_parts_stay_in_memory(monkeypatch):
    """A phone-sized upload is read from one in-memory buffer: no temporary file is created for it."""
    import tempfile

    def no_temp_files(*args, **kwargs):
        raise AssertionError("a temporary file was created for an upload")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_temp_files)
    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", no_temp_files)
    body, content_type = encode_multipart_formdata({"file": ("phone.jpg", BIG * 3, "image/jpeg")})
    assert parse(FastFormDataParser, body, content_type)[1] == [("file", "phone.jpg", "image/jpeg", BIG * 3)]


class RecordingStream(io.BytesIO):
    """A request body that remembers the size of every read asked of it."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self.asked: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(size)
        return super().read(size)

    def readinto(self, buffer) -> int:  # what Werkzeug's LimitedStream calls when the stream has it
        self.asked.append(len(buffer))
        return super().readinto(buffer)


@pytest.mark.parametrize("size", [10_000, 3_137_133], ids=["leaf", "phone"])
def test_a_body_of_known_length_is_read_in_few_large_steps(size):
    """gunicorn reads ahead up to 1 MiB and copies back what a small read leaves over: a 3-MB upload read 64 KiB
    at a time cost ~3 ms of copying. A small body is one read of its own length; a big one, 1-MiB steps."""
    body, content_type = encode_multipart_formdata({"file": ("x.jpg", b"j" * size, "image/jpeg")})
    stream = RecordingStream(body)
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": stream}
    _, _, files = FastFormDataParser().parse_from_environ(environ)
    assert files["file"].read() == b"j" * size
    data_reads = [n for n in stream.asked if n]
    assert max(data_reads) == min(CHUNK_BYTES, len(body))
    assert len(data_reads) <= len(body) // (1 << 20) + 2  # MiB steps (the last read finds the end), not 64-KiB ones
