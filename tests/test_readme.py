"""The README's examples work as written (against a live server on a free port instead of :5000)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from support import ROOT

README = (ROOT / "README.md").read_text()
DEFAULT_URL = "http://127.0.0.1:5000"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


CURL_LINES = [line for block in code_blocks("bash") for line in block.splitlines() if line.startswith("curl ")]


def test_readme_has_curl_examples_for_every_endpoint():
    joined = "\n".join(CURL_LINES)
    for path in ("/predict", "/feedback", "/v1/model", "/readyz", "/metrics", "/openapi.json"):
        assert path in joined, path


@pytest.mark.parametrize("command", CURL_LINES, ids=[f"curl-{i}" for i in range(len(CURL_LINES))])
def test_curl_example(shipped_server, command):
    result = subprocess.run(["bash", "-c", command.replace(DEFAULT_URL, shipped_server.url) + " -w '\\n%{http_code}'"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    body, status = result.stdout.rsplit("\n", 1)
    assert status in ("200", "201"), result.stdout
    if "/metrics" in command:
        assert "tomato_http_requests_total" in body
        return
    answer = json.loads(body)
    if "/predict" in command:
        expected = re.findall(r"inference_image/(\w+)_\d+\.jpg", command)
        assert [p["class_name"] for p in answer["predictions"]] == expected


@pytest.mark.parametrize("block, printed", zip(code_blocks("python"), [r"diagnosed Late blight (0\.\d+|1\.0)", r"Bacterial spot 0\.\d+|Bacterial spot 1\.0",
                                                      r"Late_blight"]),
                         ids=["python-inprocess", "python-requests", "python-tritonclient"])
def test_python_example(shipped_server, block, printed):
    result = subprocess.run([sys.executable, "-c", block.replace(DEFAULT_URL, shipped_server.url)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(printed, result.stdout.strip()), result.stdout
