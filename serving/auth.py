"""The optional API token: read as a raw string, refused when it looks like an attempt to turn auth off.

Flask's `from_prefixed_env` parses values as JSON, so TOMATO_API_TOKEN=0, false, null or "" used to become a falsy
value and silently disable auth (and `true` became the token "True"). The token is read from the environment as
the exact string instead, and start-up stops with a clear message when it is empty or reads like "off": to run
without auth, leave the variable unset.
"""
from __future__ import annotations

import hmac
import os
from typing import Mapping

from flask import current_app, request

from serving.errors import ApiError

TOKEN_ENV = "TOMATO_API_TOKEN"
SWITCH_WORDS = {"", "0", "false", "no", "off", "none", "null", "nil", "undefined", "disabled", "true", "yes", "on", "1"}


class InvalidToken(ValueError):
    """The configured token is empty or looks like a switch rather than a secret."""


def token_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The raw TOMATO_API_TOKEN (None when unset), validated."""
    environ = os.environ if environ is None else environ
    return validate_token(environ[TOKEN_ENV]) if TOKEN_ENV in environ else None


def validate_token(token: object) -> str | None:
    """None (auth off) or a usable secret; anything that looks like a yes/no switch is refused."""
    if token is None:
        return None
    if not isinstance(token, str):
        raise InvalidToken(f"{TOKEN_ENV} must be a string, got {type(token).__name__} {token!r}")
    if token.strip().lower() in SWITCH_WORDS:
        raise InvalidToken(
            f"{TOKEN_ENV}={token!r} looks like a switch, not a secret: unset {TOKEN_ENV} to run without auth, "
            f"or set it to a real token (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if token != token.strip():
        raise InvalidToken(f"{TOKEN_ENV} has leading or trailing whitespace; clients could never send it exactly")
    return token


def presented_token(headers: Mapping[str, str]) -> str:
    """The token a request carries: `Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110 11.1), or
    `X-API-Token: <token>` for clients that cannot set Authorization; "" when neither is present."""
    scheme, _, credentials = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("X-API-Token", "").strip()


def token_matches(headers: Mapping[str, str], expected: str) -> bool:
    return hmac.compare_digest(presented_token(headers).encode(), expected.encode())


def require_token() -> None:
    """401 unless this request carries the configured API token (no-op when none is set): every route that takes
    work or returns a caller's data (/predict, /feedback, /v2 infer, /v1/jobs) calls this one check."""
    token = current_app.config["API_TOKEN"]
    if token is not None and not token_matches(request.headers, token):
        raise ApiError(401, "unauthorized", "missing or wrong API token", {"WWW-Authenticate": "Bearer"})
