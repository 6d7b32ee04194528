"""schemathesis against the live server's /openapi.json: what the spec calls valid is accepted, what it calls
invalid is refused with a documented 4xx, and nothing answers 500 (positive and negative modes, bounded, seeded).

Image fields draw from real leaf photos (tests/schemathesis_hooks.py). SCHEMATHESIS_EXAMPLES raises the bound
for a longer run (e.g. 1000).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import CLASS_NAMES, ROOT, LiveServer

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "40"))
SEED = 20261202


@pytest.fixture(scope="module")
def server(shipped_bundle_path, tmp_path_factory, redis_server):
    # the job routes on the session's Redis, in a database and queue of their own: jobs are queued, never scored
    env = {"TOMATO_JOBS_REDIS_URL": redis_server.url(5), "TOMATO_JOBS_QUEUE": "schemathesis"}
    live = LiveServer(shipped_bundle_path, tmp_path_factory.mktemp("schemathesis"), threads=16, workers=1,
                      extra_env=env)
    try:
        yield live.wait_ready()
    finally:
        live.stop()


def schemathesis_cli() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert found, "schemathesis is not installed (it is pinned in requirements.txt)"
    return found


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_failure(server, mode, tmp_path):
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    command = [schemathesis_cli(), "run", f"{server.url}/openapi.json", "--mode", mode, "--checks", "all",
               "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--no-color", "--request-timeout", "30",
               # DELETE /v1/jobs/{id} cancels a job, which then reads as "cancelled" until its TTL (issue 17): by
               # design not the "deleted resource answers 404" this stateful check expects
               "--exclude-checks", "use_after_free"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output and "Operations:       19 selected / 19 total" in output, output[-3000:]
    assert " 500 " not in server.log(), server.log()[-3000:]


def test_the_spec_states_the_servers_limits(make_app):
    spec = make_app(MAX_FILES=5).test_client().get("/openapi.json").get_json()
    predict = spec["paths"]["/predict"]["post"]
    assert predict["parameters"][0]["schema"] == {"type": "integer", "minimum": 1, "maximum": len(CLASS_NAMES)}
    files = predict["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["file"]
    assert (files["minItems"], files["maxItems"]) == (1, 5)
    assert [set(choice["required"]) for choice in
            predict["requestBody"]["content"]["application/json"]["schema"]["anyOf"]] == [{"image"}, {"images"}]
    feedback = spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert feedback["properties"]["correct_class"]["enum"] == [*CLASS_NAMES, "not_tomato_leaf"]
    assert feedback["properties"]["predicted_class"]["enum"] == [*CLASS_NAMES, "not_tomato_leaf", ""]
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiToken"}
