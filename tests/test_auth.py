"""TOMATO_API_TOKEN is read as the exact string; switch-like values stop the server; Bearer in any case."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import ROOT, free_port

from serving.auth import InvalidToken, presented_token


def files(data: bytes) -> dict:
    import io

    return {"file": (io.BytesIO(data), "leaf.jpg")}


@pytest.mark.parametrize("value", ["", "   ", "0", "false", "False", "null", "none", "no", "off", "true", "1"])
def test_switch_like_tokens_stop_the_app_instead_of_turning_auth_off(make_app, monkeypatch, value):
    monkeypatch.setenv("TOMATO_API_TOKEN", value)
    with pytest.raises(InvalidToken, match="unset TOMATO_API_TOKEN to run without auth"):
        make_app()


def test_a_token_that_looks_like_a_number_stays_the_exact_string(make_app, monkeypatch, leaf_bytes):
    """Flask's prefixed-env parsing would turn "00123" into the integer 123 (and "true" into True)."""
    monkeypatch.setenv("TOMATO_API_TOKEN", "00123")
    client = make_app().test_client()
    assert client.post("/predict", data=files(leaf_bytes), headers={"Authorization": "Bearer 123"}).status_code == 401
    assert client.post("/predict", data=files(leaf_bytes), headers={"Authorization": "Bearer 00123"}).status_code == 200


@pytest.mark.parametrize("header", ["Bearer s3cret-token", "bearer s3cret-token", "BEARER  s3cret-token "])
def test_the_bearer_scheme_is_case_insensitive(make_app, leaf_bytes, header):
    client = make_app(API_TOKEN="s3cret-token").test_client()
    assert client.post("/predict", data=files(leaf_bytes), headers={"Authorization": header}).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic s3cret-token"}, {"Authorization": "Bearer"},
                                     {"Authorization": "Bearers3cret-token"}, {"X-API-Token": "wrong"}])
def test_anything_but_the_token_is_refused(make_app, leaf_bytes, headers):
    client = make_app(API_TOKEN="s3cret-token").test_client()
    response = client.post("/predict", data=files(leaf_bytes), headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized" and response.headers["WWW-Authenticate"] == "Bearer"
    assert client.post("/feedback", data=files(leaf_bytes), headers=headers).status_code == 401


def test_x_api_token_is_the_documented_alternative():
    assert presented_token({"X-API-Token": "abc"}) == "abc"
    assert presented_token({"Authorization": "Bearer xyz", "X-API-Token": "abc"}) == "xyz"


@pytest.mark.parametrize("launcher", ["flask_server", "gunicorn"])
def test_the_server_refuses_to_start_with_a_falsy_token(tiny_bundle_path, tmp_path, launcher):
    env = {**os.environ, "TOMATO_API_TOKEN": "false", "TOMATO_MODEL_PATH": str(tiny_bundle_path),
           "TOMATO_FEEDBACK_DIR": str(tmp_path)}
    port = free_port()
    command = ([sys.executable, "flask_server.py", "--port", str(port)] if launcher == "flask_server"
               else [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"])
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "refusing to start: TOMATO_API_TOKEN='false' looks like a switch" in result.stdout + result.stderr
