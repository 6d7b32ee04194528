"""Zero-downtime model swap: `kill -HUP <gunicorn master>` makes every worker load the bundle at MODEL_PATH again.

gunicorn's own HUP starts new workers and stops the old ones at once; the new ones then need seconds to load and
warm a model, and a bundle that fails to load makes workers fail to boot, which stops the whole server. Here the
master only relays the HUP to its workers (`install_master`), and each worker swaps in place, in a background
thread (`ModelSwapper`): it loads, checks and warms the new bundle with the engine it serves with now (an ONNX
Runtime server refuses a bundle whose ONNX graph fails its check against eager PyTorch), starts a batcher for it,
and only then replaces the (bundle, batcher) pair in one assignment. Requests already holding the old pair finish
on it; the old batcher stops after a grace period. A bundle that fails any step (corrupt file, wrong head, failed
ONNX check) is refused: the old model keeps serving and the refusal is recorded.

Each worker's outcome is a small JSON record (under the server's run folder when there are several workers), which
/readyz shows and `python -m serving.reload` waits for. Rollback is the same operation with the old file.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from inference import MicroBatcher, ModelBundle, load_bundle

log = logging.getLogger(__name__)

SWAP_SIGNAL = signal.SIGHUP
RECORDS = "models"  # sub-folder of the run folder: one <pid>.json per worker


class ModelSwapper:
    """One per worker process: `request()` (signal-safe: sets an event) asks for a swap, a daemon thread does it."""

    def __init__(self, service: Any, grace_s: float) -> None:
        self.service = service
        self.grace_s = grace_s  # how long the old batcher keeps taking work from requests that still hold it
        self.record: dict[str, Any] = {"state": "initial", "error": None, "requested_at": None, "finished_at": None}
        self._wanted = threading.Event()
        self._requested_at: float | None = None
        self._thread = threading.Thread(target=self._run, name="model-swapper", daemon=True)

    def start(self) -> "ModelSwapper":
        """Start the swapping thread (install_worker does, under gunicorn: apps built in tests need none)."""
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def request(self) -> None:
        """Ask for a swap; safe in a signal handler (only sets an event), coalesces requests made during one."""
        self._requested_at = time.time()
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            requested_at = self._requested_at
            try:
                self.record = {**swap(self.service, self.grace_s), "requested_at": requested_at,
                               "finished_at": time.time()}
            except Exception as exc:  # never let the swapper die: the next HUP must still work
                log.exception("model swap failed unexpectedly")
                self.record = {"state": "refused", "error": f"{type(exc).__name__}: {exc}",
                               "requested_at": requested_at, "finished_at": time.time()}
            self.publish()

    def publish(self) -> None:
        """This worker's model and last swap, for /readyz (all workers' records when they share a run folder)."""
        bundle = self.service.bundle
        current = {"version": bundle.version, "sha256": bundle.sha256} if bundle else {"version": None, "sha256": None}
        self.record = {**self.record, **current}
        run_dir = self.service.config.get("RUN_DIR")
        if run_dir:
            folder = Path(run_dir) / RECORDS
            folder.mkdir(exist_ok=True)
            staged = folder / f".{os.getpid()}.json"
            staged.write_text(json.dumps(self.record))
            os.replace(staged, folder / f"{os.getpid()}.json")

    def all_records(self) -> list[dict[str, Any]]:
        run_dir = self.service.config.get("RUN_DIR")
        if not run_dir:
            return [self.record]
        records = []
        for path in sorted((Path(run_dir) / RECORDS).glob("[0-9]*.json")):
            try:
                records.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # a worker that just exited
                continue
        return records


def swap(service: Any, grace_s: float) -> dict[str, Any]:
    """Load MODEL_PATH again; put it in service if it loads, passes every check and differs from what is served."""
    while not service.ready.is_set() and service.load_error is None:  # the first load is running: swap after it
        time.sleep(0.2)
    config = service.config
    current = service.bundle
    backend = current.engine.name if current is not None else str(config["BACKEND"])
    threads = int(config["TORCH_THREADS"]) or os.cpu_count() or 1
    try:
        bundle = load_bundle(config["MODEL_PATH"], device=config["DEVICE"], warmup=True, backend=backend,
                             threads=threads)
    except Exception as exc:  # corrupt file, wrong head, failed ONNX check ...: keep serving the old model
        log.error("model swap refused, still serving %s: %s", current.version if current else None, exc)
        return {"state": "refused", "error": f"{type(exc).__name__}: {exc}"}
    if current is not None and bundle.sha256 == current.sha256:
        return {"state": "unchanged", "error": None}
    old_batcher = service.batcher
    service.activate(bundle)
    log.info("model swapped: now serving %s %s (%s)", bundle.name, bundle.version, bundle.sha256[:12])
    if old_batcher is not None:
        retire = threading.Timer(grace_s, _retire, args=(old_batcher,))
        retire.daemon = True  # a worker told to exit does not wait for it
        retire.start()
    return {"state": "swapped", "error": None}


def _retire(batcher: MicroBatcher) -> None:
    """Stop the old batcher, then let the collector free the old model (objects frozen at start-up included)."""
    batcher.stop()
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def served_versions(records: list[dict[str, Any]]) -> dict[str, Any]:
    """For /readyz: which model versions answer (and in how many workers), and each worker's last swap."""
    serving: dict[tuple[Any, Any], dict[str, Any]] = {}
    for record in records:
        key = (record.get("version"), record.get("sha256"))
        serving.setdefault(key, {"version": key[0], "sha256": key[1], "workers": 0})["workers"] += 1
    swaps = [{k: record.get(k) for k in ("state", "error", "requested_at", "finished_at")} for record in records]
    return {"serving": list(serving.values()), "last_swaps": swaps}


# gunicorn hooks (installed by gunicorn.conf.py)

def relay_to_workers(arbiter: Any) -> None:
    """The master's HUP: ask every worker to swap its model in place (instead of gunicorn's restart of them)."""
    workers = list(arbiter.WORKERS)
    arbiter.log.info("HUP: asking %d worker(s) to load their model file again (zero-downtime model swap)",
                     len(workers))
    for pid in workers:
        try:
            os.kill(pid, SWAP_SIGNAL)
        except ProcessLookupError:
            pass


def install_master(arbiter: Any) -> None:
    """on_starting: replace gunicorn's HUP handling (reload config, replace workers) with the in-place swap."""
    arbiter.handle_hup = lambda: relay_to_workers(arbiter)


def ignore_until_ready(worker: Any) -> None:
    """post_fork: a HUP arriving while the worker boots must not kill it (gunicorn resets HUP to the default,
    which terminates the process): keep it ignored until `install_worker` sets the real handler."""
    worker.SIGNALS = [s for s in worker.SIGNALS if s != SWAP_SIGNAL]
    signal.signal(SWAP_SIGNAL, signal.SIG_IGN)


def install_worker(worker: Any, find_swapper: Callable[[Any], ModelSwapper | None] | None = None) -> None:
    """post_worker_init: HUP in this worker requests a swap from the app's ModelSwapper."""
    app = getattr(worker, "wsgi", None)
    swapper = (find_swapper or _swapper_of)(app)
    if swapper is None:
        return
    swapper.start()
    signal.signal(SWAP_SIGNAL, lambda signum, frame: swapper.request())
    signal.siginterrupt(SWAP_SIGNAL, False)


def _swapper_of(app: Any) -> ModelSwapper | None:
    service = getattr(app, "extensions", {}).get("tomato")
    return getattr(service, "swapper", None)


def forget_worker(run_dir: str | Path, pid: int) -> None:
    """child_exit: a dead worker's record goes with it."""
    (Path(run_dir) / RECORDS / f"{pid}.json").unlink(missing_ok=True)
