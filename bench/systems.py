"""Start and stop the HTTP systems under test, each on free loopback ports, each in its own process group.

Every system is a `ServerProcess`: a command, a readiness check, the predict URL and how to send an image.
`stop()` ends only the process group this module started (SIGTERM, then SIGKILL after a grace period).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

from bench.loadgen import RequestBuilder, multipart_file, raw_body

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
OURS_THREADS = 128  # flask_server.py's default --threads (above MAX_QUEUE + MAX_BATCH_SIZE: overload reaches the queue)
BASELINE_THREADS = 32  # the tutorial server; more threads would only mean more forwards fighting over 2 cores


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vm_rss_kib(pid: int) -> int | None:
    """Resident memory of one process from /proc/PID/status (KiB), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class ServerProcess:
    name: str  # short key: ours, baseline, torchserve
    label: str  # what the report calls it
    cmd: list[str]
    predict_url: str
    ready: Callable[[], bool]  # True once the system answers predictions
    build: RequestBuilder = multipart_file
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    notes: list[str] = field(default_factory=list)  # how it was configured, for the report
    measured: dict[str, dict] = field(default_factory=dict)  # extra measurements taken while it ran
    process: subprocess.Popen | None = None
    # peers (issue 19): how to read one answer as {"class_name", "probabilities"}, and ours on the samples; the run
    # refuses to time a system whose answers differ (bench/peers/check.py)
    parse_answer: Callable[[bytes], dict] | None = None
    expected: dict[str, dict] | None = None
    cwd: Path = ROOT  # where `cmd` runs: another checkout of ours for bench/ab.py

    def start(self) -> "ServerProcess":
        log = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.cmd, cwd=self.cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_ready(self, timeout: float = 180.0) -> "ServerProcess":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.ready():
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is not None:
            _kill_session_leftovers(self.process.pid)
            return
        pgid = self.process.pid  # start_new_session: the group id is our child's pid
        before = _started_at(pgid)  # its processes now, descendants in sessions of their own included
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        # children (e.g. TorchServe's Python workers) may outlive the leader for a moment
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _kill_session_leftovers(pgid, before)


def _started_at(session_id: int) -> dict[int, str]:
    """pid -> start time (clock ticks since boot) of every process of our server (bench.cpu.server_pids)."""
    from bench.cpu import server_pids

    out = {}
    for pid in server_pids(session_id):
        try:
            out[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            continue
    return out


def _kill_session_leftovers(session_id: int, known: dict[int, str] | None = None) -> None:
    """Processes of our server that outlived its process group: those in groups of their own (Ray's workers), and
    descendants seen before the stop (`known`, pid -> start time) that were orphaned in sessions of their own. SIGKILL
    them; a pid is only killed while its start time is still the one seen, so a reused pid is never hit."""
    targets = {**(known or {}), **_started_at(session_id)}
    for pid, started in targets.items():
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == started:
                os.kill(pid, signal.SIGKILL)
        except (OSError, IndexError):
            continue


def _status_ok(url: str) -> Callable[[], bool]:
    return lambda: requests.get(url, timeout=2).status_code == 200


def our_worker_count(experiment: list[str]) -> int:
    """The worker processes flask_server.py will start: --workers from the experiment, else gunicorn.conf.py's."""
    import runpy

    from flask_server import GUNICORN_CONFIG

    given = int(experiment[experiment.index("--workers") + 1]) if "--workers" in experiment else 0
    return given or int(runpy.run_path(str(GUNICORN_CONFIG))["workers"])  # 0 means the default there too


def ours(model: Path, tmp: Path, env: dict[str, str] | None = None, threads: int = OURS_THREADS,
         experiment: list[str] | None = None, checkout: Path = ROOT) -> ServerProcess:
    """flask_server.py exactly as documented (gunicorn, one process per core, gthread), on a free port.

    `experiment` (e.g. ["--forward", "torchscript"]) runs it through bench/ours_experimental.py instead: the same
    server with one proposed change applied, for measuring before anyone edits flask_server.py. `checkout` runs
    another checkout's flask_server.py (e.g. the commit before, for bench/ab.py) with this repository's venv."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"TOMATO_FEEDBACK_DIR": str(tmp / "feedback"), **(env or {})}
    knobs = " ".join(f"{k}={v}" for k, v in sorted(env.items()) if k != "TOMATO_FEEDBACK_DIR") or "defaults"
    script = ["bench/ours_experimental.py", *experiment] if experiment else ["flask_server.py"]
    return ServerProcess(
        name="ours", label="ours (flask_server.py)" + (f" EXPERIMENT {' '.join(experiment)}" if experiment else ""),
        cmd=[PYTHON, *script, "--port", str(port), "--model", str(model), "--threads", str(threads)],
        predict_url=base + "/predict", ready=_status_ok(base + "/readyz"), env=env,
        log_path=tmp / f"ours-{port}.log", cwd=checkout,
        notes=[f"gunicorn, {our_worker_count(experiment or [])} process(es) x {threads} gthread threads, a micro-batcher "
               f"in each; env: {knobs}"
               + (f"; EXPERIMENT bench/ours_experimental.py {' '.join(experiment)}" if experiment else "")],
    )


def baseline(model: Path, tmp: Path, server: str = "gunicorn", threads: int = BASELINE_THREADS) -> ServerProcess:
    """bench/baseline_server.py: the tutorial Flask app, one forward per request."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    how = (f"gunicorn 1 process x {threads} gthread threads" if server == "gunicorn"
           else "Flask's threaded development server (app.run(threaded=True))")
    return ServerProcess(
        name="baseline", label="seed-tutorial baseline",
        cmd=[PYTHON, "bench/baseline_server.py", "--port", str(port), "--model", str(model), "--server", server,
             "--threads", str(threads)],
        predict_url=base + "/predict", ready=_status_ok(base + "/ping"), log_path=tmp / f"baseline-{port}.log",
        notes=[f"{how}; one eager PyTorch forward per request in the request thread; torch threads = cores"],
    )


def export_torchscript(model: Path, out: Path) -> dict:
    """Trace the bundle's network to TorchScript (`out`, a .pt) and return its preprocessing and labels. Only the
    disease logits are traced (a 2.x network has one more output column, the leaf logit, that the stock handler
    would take for an eleventh class)."""
    code = (
        "import json, sys, torch\n"
        "from inference import load_bundle\n"
        "b = load_bundle(sys.argv[1], device='cpu', warmup=False, backend='eager')\n"
        "s, c = b.preprocess.image_size, len(b.class_names)\n"
        "class Diseases(torch.nn.Module):\n"
        "    def __init__(self, net):\n"
        "        super().__init__()\n"
        "        self.net = net\n"
        "    def forward(self, x):\n"
        "        return self.net(x)[:, :c]\n"
        "with torch.no_grad():\n"
        "    ts = torch.jit.trace(Diseases(b.network.eval()), torch.zeros(1, 3, s, s).contiguous(memory_format=torch.channels_last))\n"
        "ts.save(sys.argv[2])\n"
        "print(json.dumps({'preprocess': b.preprocess.to_dict(), 'class_names': b.class_names}))\n"
    )
    done = subprocess.run([PYTHON, "-c", code, str(model), str(out)], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def torchserve(model: Path, tmp: Path, batch_size: int = 16, max_batch_delay_ms: int = 5, workers: int = 1,
               stock_transform: bool = False) -> ServerProcess:
    """TorchServe 0.12 with the stock image_classifier handler (transform matched to ours unless
    `stock_transform`), the bundle traced to TorchScript, and dynamic batching in the model config."""
    exe = shutil.which("torchserve", path=str(Path(PYTHON).parent)) or shutil.which("torchserve")
    archiver = shutil.which("torch-model-archiver", path=str(Path(PYTHON).parent)) or shutil.which("torch-model-archiver")
    if not exe or not archiver:
        raise RuntimeError("torchserve / torch-model-archiver not installed (pip install -r bench/requirements.txt)")
    if not shutil.which("java"):
        raise RuntimeError("TorchServe needs Java 11+ on PATH")
    work = tmp / "torchserve"
    store = work / "model_store"
    shutil.rmtree(work, ignore_errors=True)
    store.mkdir(parents=True)
    meta = export_torchscript(model, work / "tomato.pt")
    (work / "preprocess.json").write_text(json.dumps(meta["preprocess"]))
    (work / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(meta["class_names"])}))
    (work / "model-config.yaml").write_text(
        f"minWorkers: {workers}\nmaxWorkers: {workers}\nbatchSize: {batch_size}\nmaxBatchDelay: {max_batch_delay_ms}\n"
        "responseTimeout: 120\n"
    )
    handler = "image_classifier" if stock_transform else str(ROOT / "bench" / "torchserve_handler.py")
    extra = [str(work / "index_to_name.json")] + ([] if stock_transform else [str(work / "preprocess.json")])
    subprocess.run(
        [archiver, "--model-name", "tomato", "--version", "1.0", "--serialized-file", str(work / "tomato.pt"),
         "--handler", handler, "--extra-files", ",".join(extra), "--config-file", str(work / "model-config.yaml"),
         "--export-path", str(store), "--force"],
        cwd=work, check=True, capture_output=True, timeout=300,
    )
    ports = {k: free_port() for k in ("inference", "management", "metrics", "grpc_i", "grpc_m", "worker", "dist")}
    (work / "config.properties").write_text("\n".join([
        f"inference_address=http://127.0.0.1:{ports['inference']}",
        f"management_address=http://127.0.0.1:{ports['management']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}",
        f"grpc_inference_port={ports['grpc_i']}",
        f"grpc_management_port={ports['grpc_m']}",
        f"initial_worker_port={ports['worker']}",
        f"initial_distribution_port={ports['dist']}",
        f"model_store={store}",
        "load_models=tomato.mar",
        "disable_token_authorization=true",
        "install_py_dep_per_model=false",
        "disable_system_metrics=true",
        f"default_workers_per_model={workers}",
        f"max_request_size={20 * 1024 * 1024}",  # same upload limit as ours (TorchServe's default is 6.5 MB)
        f"python={PYTHON}",
        "",
    ]))
    logs = work / "logs"
    logs.mkdir()
    management = f"http://127.0.0.1:{ports['management']}/models/tomato"

    def ready() -> bool:
        answer = requests.get(management, timeout=2)
        if answer.status_code != 200:
            return False
        workers_info = answer.json()[0].get("workers", [])
        return bool(workers_info) and all(w.get("status") == "READY" for w in workers_info)

    transform = ("stock ImageNet transform (resize 256, crop 224, ImageNet mean/std)" if stock_transform else
                 "stock image_classifier with only the transform replaced to match ours (bench/torchserve_handler.py)")
    return ServerProcess(
        name="torchserve", label="TorchServe 0.12",
        cmd=[exe, "--start", "--foreground", "--ncs", "--model-store", str(store),
             "--ts-config", str(work / "config.properties"), "--disable-token-auth"],
        predict_url=f"http://127.0.0.1:{ports['inference']}/predictions/tomato", ready=ready, build=raw_body,
        env={"LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs), "TEMP": str(work)},
        log_path=tmp / f"torchserve-{ports['inference']}.log",
        notes=[f"TorchScript (torch.jit.trace) model, {transform}; batchSize={batch_size}, "
               f"maxBatchDelay={max_batch_delay_ms} ms, {workers} worker(s); full-size JPEG decode (no draft); "
               "system metrics off; image sent as raw body"],
    )


# Peers of issue 19: today's model servers, each in the peers venv (make peers-venv), each serving the same ONNX
# file with the same preprocessing and thread budget as ours (bench/peers/common.py), timed only once their answers
# on the samples are ours (bench/peers/check.py).
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PYTRITON_PYTHON = ROOT / ".venv-pytriton" / "bin" / "python"  # its own venv: nvidia-pytriton 0.7 needs numpy<2
PEERS = ("litserve", "rayserve", "bentoml", "pytriton")


def peer_versions(python: Path = PEERS_PYTHON) -> dict[str, str]:
    """Versions installed in a peers venv (the report's machine section), or why there are none."""
    code = ("import json, importlib.metadata as m\nout = {}\n"
            "for p in ('litserve', 'ray', 'bentoml', 'nvidia-pytriton', 'fastapi', 'uvicorn', 'onnxruntime', 'torch', "
            "'pillow', 'numpy'):\n"
            "    try: out[p] = m.version(p)\n    except m.PackageNotFoundError: out[p] = 'not installed'\n"
            "print(json.dumps(out))\n")
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _json_answer(body: bytes) -> dict:
    answer = json.loads(body)
    return answer[0] if isinstance(answer, list) else answer  # BentoML answers a batchable API with a list


def triton_request(data: bytes) -> tuple[bytes, dict[str, str]]:
    """PyTriton's natural input: a KServe v2 inference request, the image as one BYTES element in the binary
    extension (a JSON header, then a 4-byte little-endian length and the bytes), probabilities asked back as JSON."""
    header = json.dumps({
        "inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data) + 4}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
    }).encode()
    return header + len(data).to_bytes(4, "little") + data, {
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def _triton_answer(class_names: list[str]) -> Callable[[bytes], dict]:
    def parse(body: bytes) -> dict:
        output = next(o for o in json.loads(body)["outputs"] if o["name"] == "probabilities")
        row = [float(x) for x in output["data"]]
        return {"class_name": class_names[max(range(len(row)), key=row.__getitem__)],
                "probabilities": dict(zip(class_names, row))}
    return parse


def peer(name: str, model: Path, tmp: Path) -> ServerProcess:
    """One peer server (not started), configured from bench/peers/common.py, with ours as its expected answers."""
    from bench.peers import common
    from bench.peers.check import reference_answers

    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}")
    python = PYTRITON_PYTHON if name == "pytriton" else PEERS_PYTHON
    if not python.exists():
        raise RuntimeError(f"{python} missing: make peers-venv (bench/requirements-peers.txt, "
                           "bench/requirements-pytriton.txt)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config_path = tmp / f"{name}-{port}.json"
    config = common.write_config(model, config_path, port)
    env = {common.CONFIG_ENV: str(config_path), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(config.threads_per_worker)}
    budget = (f"{config.workers} x {config.threads_per_worker} ONNX Runtime thread(s) (ours: {config.workers} "
              f"processes x {config.threads_per_worker}); max batch {config.max_batch_size}, wait "
              f"{config.batch_wait_ms:g} ms; ONNX {Path(config.onnx_path).name}")
    module = [str(python), "-m", f"bench.peers.{name}_app"]
    if name == "litserve":
        server = ServerProcess(
            name=name, label="LitServe", cmd=module, predict_url=base + "/predict", ready=_status_ok(base + "/health"),
            notes=[f"LitAPI with max_batch_size/batch_timeout, workers_per_device={config.workers}, one uvicorn API "
                   f"server; multipart `file`; {budget}"])
    elif name == "rayserve":
        server = ServerProcess(
            name=name, label="Ray Serve", cmd=module, predict_url=base + "/predict",
            ready=lambda: "/predict" in requests.get(base + "/-/routes", timeout=2).json(),
            notes=[f"{config.workers} replicas (num_cpus=1 each) with @serve.batch, ray.init(num_cpus="
                   f"{config.thread_budget}), HTTP proxy on the head; multipart `file`; {budget}"])
    elif name == "bentoml":
        server = ServerProcess(
            name=name, label="BentoML", predict_url=base + "/classify", ready=_status_ok(base + "/readyz"),
            cmd=[str(PEERS_PYTHON), "-m", "bentoml", "serve", "bench.peers.bentoml_app:TomatoLeaf", "--host",
                 "127.0.0.1", "--port", str(port), "--working-dir", str(ROOT)],
            notes=[f"@bentoml.service(workers={config.workers}), @bentoml.api(batchable=True) adaptive batching; "
                   f"multipart `file`; {budget}"])
    else:
        server = ServerProcess(
            name=name, label="PyTriton (Triton)", cmd=module, predict_url=base + "/v2/models/tomato/infer",
            ready=_status_ok(base + "/v2/models/tomato/ready"), build=triton_request,
            notes=[f"Triton's dynamic batching, {config.workers} model instance(s); KServe v2 binary BYTES input; "
                   f"{budget}"])
        server.parse_answer = _triton_answer(config.class_names)
    server.env = env
    server.log_path = tmp / f"{name}-{port}.log"
    server.parse_answer = server.parse_answer or _json_answer
    server.expected = reference_answers(model, tmp / "reference_answers.json")
    return server
