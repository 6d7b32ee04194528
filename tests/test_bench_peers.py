"""The benchmark peers of issue 19, checked without their frameworks (those live in .venv-peers / .venv-pytriton).

What must hold for the comparison to be fair runs here in the product's venv: every peer module parses and serves
through bench/peers/common.py; the config they get names the very ONNX file our server runs, our batch size and
wait, and our thread budget; common.Classifier (what the peers run per batch) gives our answers on the samples;
the answers check rejects a different answer; the Triton request encoding is the KServe v2 binary form.
No timing assertions; no peer server is started.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from bench import systems
from bench.peers import check, common

PEERS_DIR = Path(common.__file__).parent


@pytest.mark.parametrize("name", systems.PEERS)
def test_each_peer_module_parses_and_serves_through_the_shared_config(name):
    tree = ast.parse((PEERS_DIR / f"{name}_app.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "bench.peers.common" for alias in node.names}
    assert {"Classifier", "PeerConfig"} <= imported, imported
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert "PeerConfig.load" in calls and "Classifier" in calls, calls
    # batch size and wait come from the config, never a literal of the peer's own
    source = (PEERS_DIR / f"{name}_app.py").read_text()
    assert "CONFIG.max_batch_size" in source and ("CONFIG.batch_wait_ms" in source or name == "bentoml")


def test_peer_config_is_our_onnx_file_batching_and_thread_budget(tiny_bundle_path, tmp_path):
    from flask_server import DEFAULTS
    from inference.bundle import load_bundle
    from inference.engines import cached_onnx_path, default_cache_dir

    config = common.write_config(tiny_bundle_path, tmp_path / "peer.json", port=12345)
    bundle = load_bundle(tiny_bundle_path, device="cpu", warmup=False, backend="eager")

    assert config == common.PeerConfig.load(tmp_path / "peer.json")
    assert Path(config.onnx_path) == cached_onnx_path(default_cache_dir(), bundle.sha256, bundle.preprocess.image_size)
    assert Path(config.onnx_path).is_file()
    workers, threads = common.our_budget()
    assert (config.workers, config.threads_per_worker) == (workers, threads)
    assert config.thread_budget == workers * threads <= max(1, __import__("os").cpu_count() or 1)
    assert config.max_batch_size == DEFAULTS["MAX_BATCH_SIZE"] and config.batch_wait_ms == DEFAULTS["BATCH_WAIT_MS"]
    assert config.class_names == bundle.class_names and config.temperature == bundle.temperature
    assert config.preprocess == bundle.preprocess.to_dict()


def test_the_peers_classifier_gives_our_answers_on_the_samples(tiny_bundle_path, tmp_path):
    config = common.write_config(tiny_bundle_path, tmp_path / "peer.json", port=12345)
    classifier = common.Classifier(config)
    expected = check.reference_answers(tiny_bundle_path)
    paths = check.sample_paths()
    assert len(paths) == len(expected) >= 10
    answers = classifier.predict([classifier.preprocess(p.read_bytes()) for p in paths[:8]])  # one batch of 8
    answers += [classifier.predict([classifier.preprocess(p.read_bytes())])[0] for p in paths[8:]]  # batches of 1
    for path, answer in zip(paths, answers):
        assert check.compare(path.name, answer, expected[path.name]) is None


def test_the_answers_check_refuses_another_class_or_other_probabilities():
    want = {"class_name": "healthy", "probabilities": {"healthy": 0.9, "Leaf_Mold": 0.1}}
    assert check.compare("a.jpg", json.loads(json.dumps(want)), want) is None
    assert "class" in check.compare("a.jpg", {**want, "class_name": "Leaf_Mold"}, want)
    off = {"class_name": "healthy", "probabilities": {"healthy": 0.9 - 1e-3, "Leaf_Mold": 0.1 + 1e-3}}
    assert "differs" in check.compare("a.jpg", off, want)
    assert "classes" in check.compare("a.jpg", {"class_name": "healthy", "probabilities": {"healthy": 1.0}}, want)


def test_triton_request_is_a_kserve_v2_binary_bytes_element():
    body, headers = systems.triton_request(b"\xff\xd8jpeg")
    size = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:size])
    assert header["inputs"][0]["datatype"] == "BYTES" and header["inputs"][0]["shape"] == [1, 1]
    assert header["inputs"][0]["parameters"]["binary_data_size"] == len(body) - size == 4 + 6
    assert body[size:size + 4] == (6).to_bytes(4, "little") and body[size + 4:] == b"\xff\xd8jpeg"
    names = ["a", "b"]
    parsed = systems._triton_answer(names)(json.dumps(
        {"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}]}).encode())
    assert parsed == {"class_name": "b", "probabilities": {"a": 0.25, "b": 0.75}}


def test_a_servers_processes_include_descendants_in_sessions_of_their_own_and_stop_ends_them(tmp_path):
    """BentoML's workers call setsid: CPU, memory and stop() must still find them (bench/cpu.py, bench/systems.py)."""
    import os
    import sys
    import time

    from bench.cpu import server_pids, session_memory_kib

    pid_file = tmp_path / "child.pid"
    child = f"import os, time\nos.setsid()\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    parent = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {child!r}])\ntime.sleep(60)\n"
    server = systems.ServerProcess(name="tree", label="tree", cmd=[sys.executable, "-c", parent],
                                   predict_url="http://127.0.0.1:1/", ready=lambda: True)
    server.start()
    try:
        deadline = time.time() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline, "the child never started"
            time.sleep(0.1)
        grandchild = int(pid_file.read_text())
        assert os.getsid(grandchild) != server.pid  # a session of its own, as BentoML's workers
        assert {server.pid, grandchild} <= set(server_pids(server.pid))
        assert session_memory_kib(server.pid)["rss_kib"] > 0
    finally:
        server.stop(grace_s=5)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("stop() left the setsid descendant running")
