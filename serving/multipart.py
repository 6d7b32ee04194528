"""multipart/form-data parsing with python-multipart behind Werkzeug's `request.files` / `request.form`.

Werkzeug's own parser compiles two regular expressions around each request's (random) boundary: about 0.6 ms
per upload on this CPU, an eighth of everything a single-image /predict spends outside the model. python-multipart
(the parser Starlette and FastAPI use) finds boundaries with plain byte searches and needs about 0.03 ms.
Everything else stays Werkzeug's: the limited input stream (413 past MAX_CONTENT_LENGTH), `FileStorage`,
`MultiDict`, the form-part and form-memory limits, and the rule that a malformed body parses as an empty form.

File parts stay in memory, one buffer each, instead of Werkzeug's default container that spills anything over
500 KiB to a temporary file: the API reads every upload into memory to decode it anyway (bounded by
MAX_CONTENT_LENGTH), so spilling a 3 MB phone photo only added a file to create, write, read back and delete:
0.9 ms of server CPU per such request here (12-MP JPEG at 16 clients: 53.5 -> 55.9 req/s, median of 3 rounds).

Every limit answers with its own reason: a text field over the form-memory limit, too many parts, a part header
(a file name) too long, and a chunked body over MAX_CONTENT_LENGTH, which Werkzeug silently cuts at the limit.
"""
from __future__ import annotations

import io
import typing as t

from flask import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from serving.errors import ApiError

# A body is read in steps of up to 1 MiB (gunicorn's own read step). At 64 KiB, gunicorn read ahead up to 1 MiB and
# copied what it had left back into its buffer on every step: ~3 ms of server CPU per 3-MB upload.
CHUNK_BYTES = 1 << 20
MAX_PART_HEADER_BYTES = 16 * 1024  # python-multipart's default (4 KiB) made a part with a long file name vanish
MAX_FILENAME_CHARS = 1024  # longer than any file system allows; above it the client gets a clear 400


class _PartCollector:
    """python-multipart callbacks -> (field name, str) pairs and (field name, FileStorage) pairs."""

    def __init__(self, parser: FormDataParser) -> None:
        self.parser = parser
        self.fields: list[tuple[str, str]] = []
        self.files: list[tuple[str, FileStorage]] = []
        self.parts = 0
        self._header_lines: list[tuple[bytes, bytes]] = []
        self._field_name = b""
        self._header_value = b""

    def callbacks(self) -> dict[str, t.Callable[..., None]]:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self.parts += 1
        if self.parser.max_form_parts is not None and self.parts > self.parser.max_form_parts:
            raise RequestEntityTooLarge(f"the form has more than {self.parser.max_form_parts} parts")
        self._header_lines = []
        self._field_name = self._header_value = b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field_name += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        self._header_lines.append((self._field_name, self._header_value))
        self._field_name = self._header_value = b""

    def headers_finished(self) -> None:
        self.headers = Headers([(k.decode().strip(), v.decode().strip()) for k, v in self._header_lines])
        if "content-disposition" not in self.headers:
            raise ValueError("Missing Content-Disposition header")
        _, options = parse_options_header(self.headers["content-disposition"])
        self.name = options.get("name", "")
        self.filename = options.get("filename")
        if self.filename is not None and len(self.filename) > MAX_FILENAME_CHARS:
            raise ApiError(400, "bad_multipart", f'the file name of part "{self.name}" is {len(self.filename):,} '
                           f"characters long; at most {MAX_FILENAME_CHARS:,} are accepted")
        self.field_size = 0
        self.chunks: list[bytes] = []

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self.chunks.append(data[start:end])  # a whole chunk's slice is the chunk itself: no copy
        if self.filename is not None:
            return
        self.field_size += end - start
        limit = self.parser.max_form_memory_size
        if limit is not None and self.field_size > limit:
            raise RequestEntityTooLarge(f'text field "{self.name}" is larger than {limit:,} bytes '
                                        "(send files as file parts, with a filename)")

    def part_end(self) -> None:
        content = b"".join(self.chunks)
        self.chunks = []
        if self.filename is None:
            self.fields.append((self.name, content.decode("utf-8", "replace")))
        else:  # BytesIO over an exact bytes object: reading it whole returns that object, not a copy
            self.files.append((self.name, FileStorage(io.BytesIO(content), self.filename, self.name,
                                                      headers=self.headers)))


class FastFormDataParser(FormDataParser):
    """Werkzeug's form parser with the multipart step done by python-multipart."""

    def _parse_multipart(self, stream: t.IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> tuple[t.IO[bytes], MultiDict, MultiDict]:
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")
        collector = _PartCollector(self)
        parser = MultipartParser(boundary, collector.callbacks(), max_header_size=MAX_PART_HEADER_BYTES)
        # A 10-KB upload is one read into a 10-KB buffer, not into a 1-MiB one.
        step = min(CHUNK_BYTES, content_length) if content_length else CHUNK_BYTES
        try:
            while chunk := stream.read(step):
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as exc:
            if str(exc).startswith("Maximum header"):  # a limit, not a malformed body: say which
                raise ApiError(400, "bad_multipart", f"a form part's headers are too large: {exc} "
                               f"(at most {MAX_PART_HEADER_BYTES:,} bytes per header line)") from None
            raise
        return stream, self.cls(collector.fields), self.cls(collector.files)


class _StrictMaxStream(LimitedStream):
    """A body stream without Content-Length (chunked) that raises 413 once more than `max_bytes` arrived.

    Werkzeug's stream for this case stops reading at the limit without a word, so an oversized upload was cut at
    20 MiB and then classified (or called truncated). This one may read one byte past the limit to find out."""

    def __init__(self, stream: t.IO[bytes], max_bytes: int) -> None:
        super().__init__(stream, max_bytes + 1, is_max=True)

    def readinto(self, buffer: t.Any) -> int | None:
        size = super().readinto(buffer)
        if self.tell() >= self.limit:
            raise RequestEntityTooLarge()
        return size


class ApiRequest(Request):
    """Flask's request with the faster multipart parser and a 413 for chunked bodies over the limit."""

    form_data_parser_class = FastFormDataParser

    @cached_property
    def stream(self) -> t.IO[bytes]:
        limit = self.max_content_length
        chunked = self.content_length is None and "wsgi.input_terminated" in self.environ
        if chunked and limit is not None and not self.shallow:
            return _StrictMaxStream(self.environ["wsgi.input"], limit)
        return super().stream
