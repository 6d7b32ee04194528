"""Requests gunicorn itself refuses (before Flask) get the API's JSON error body, on a live server."""
from __future__ import annotations

import json
import socket

import pytest
import requests

from serving.http_errors import json_error_response

MALFORMED = [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431,
     "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n", 400, "bad_request"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
     400, "bad_request"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n5\r\n--b\r\nzz\r\n\r\n", 400, "bad_request"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "bad_request"),
]


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    body = rest[:int(headers["content-length"])]  # after an app answer, gunicorn may add its own
    return int(lines[0].split(" ")[1]), headers, body


@pytest.fixture(scope="module")
def server(tiny_bundle_path, tmp_path_factory):
    from support import LiveServer

    live = LiveServer(tiny_bundle_path, tmp_path_factory.mktemp("http-errors"), threads=8)
    try:
        yield live.wait_ready()
    finally:
        live.stop()


CASES = ["garbage", "long-request-line", "long-header", "too-many-headers", "bad-header-name", "bad-chunk-raw",
         "bad-chunk-multipart", "unknown-coding"]


@pytest.mark.parametrize("raw, status, code", MALFORMED, ids=CASES)
def test_gunicorn_refusals_are_json(server, raw, status, code):
    got_status, headers, body = exchange(server.port, raw)
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code and error["message"]
    assert requests.get(f"{server.url}/livez", timeout=10).status_code == 200  # and the server keeps serving


def test_the_json_answer_is_a_complete_http_response():
    raw = json_error_response(431, "Request Header Fields Too Large", "Error parsing headers: 'limit'")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert f"Content-Length: {len(body)}".encode() in head and b"Connection: close" in head
    assert json.loads(body) == {"error": {"code": "headers_too_large", "message": "Error parsing headers: 'limit'"}}
