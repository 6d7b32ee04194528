"""gunicorn's own refusals in the API's JSON shape, `{"error": {"code", "message"}}`.

A request gunicorn cannot parse (bad request line, a header or request line over its limits, a bad chunked body)
is refused by gunicorn itself, before Flask sees it, through `gunicorn.util.write_error`, which writes an HTML
page. gunicorn has no setting for that body, so `install()` (called by the post_fork hook in gunicorn.conf.py, in
every worker) puts a JSON writer in its place. The status, the reason and the message stay gunicorn's; only the
body changes.

A malformed chunked body is found later, while the view reads it: gunicorn's parser then raises inside the app,
which used to give 500. `register(app)` turns those parser errors into 400 `bad_request` (and a body cut short
into 400 `truncated_body`). tests/test_http_errors.py sends each malformed request to a live server.
"""
from __future__ import annotations

import json
import socket

from flask import Flask, Response, jsonify
from gunicorn import util
from gunicorn.http.errors import NoMoreData, ParseException

CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def json_error_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response (connection closed after it) carrying the API's error body."""
    body = json.dumps({"error": {"code": CODES.get(status, "http_error"),
                                 "message": message or reason or "unexpected server error"}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Same signature as gunicorn.util.write_error."""
    util.write_nonblock(sock, json_error_response(status_int, reason, mesg))


def install() -> None:
    util.write_error = write_json_error


def register(app: Flask) -> None:
    """Errors gunicorn's parser raises while the app reads the request body are the client's, not the server's."""
    @app.errorhandler(ParseException)
    def malformed_body(exc: ParseException) -> tuple[Response, int]:
        return jsonify({"error": {"code": "bad_request", "message": f"malformed request body: {exc}"}}), 400

    @app.errorhandler(NoMoreData)
    def truncated_body(exc: NoMoreData) -> tuple[Response, int]:
        return jsonify({"error": {"code": "truncated_body", "message": "the request body ended before its declared "
                                                                       "length"}}), 400
