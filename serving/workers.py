"""Several gunicorn worker processes acting as one server: shared metrics and one readiness answer.

Each worker process has its own model copy and batcher (Python request handling holds the GIL, so on a 2-core
machine one process per core answers about 30 % more requests than one process with two forward threads; see
BENCHMARKS.md). Two things must then stay whole-server rather than per-process:

* /metrics: prometheus-client's multiprocess mode, where every process writes its samples to files in one folder
  and a scrape sums them, whichever worker answers it;
* /readyz: 200 only when every worker has its model warm, so a load balancer never routes to a worker still loading.

The gunicorn hooks at the end set this up in the master, before the first worker forks; gunicorn.conf.py installs
them, and both `python flask_server.py` and a plain `gunicorn` started in the project folder read that file.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import values
from prometheus_client.multiprocess import mark_process_dead

METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"
RUN_DIR_PREFIX = "tomato-leaf-server-"  # + the master's pid + "-" + a random part
RUN_DIR_ENV = "TOMATO_RUN_DIR"  # create_app reads its settings from TOMATO_* variables, which workers inherit
ANNOUNCE_URL_ENV = "TOMATO_ANNOUNCE_URL"  # set by on_starting: the address the "API ready on ..." line names
STARTED_AT_ENV = "TOMATO_STARTED_AT"  # set by on_starting: when the master process began (imports included)


def default_worker_count(uses_cuda: bool, cores: int | None = None, cap: int = 4) -> int:
    """One process per CPU core (capped: each holds ~600 MiB), or one for a GPU, which a single batcher feeds best."""
    if uses_cuda:
        return 1
    return max(1, min(cores or os.cpu_count() or 1, cap))


def prepare_run_dir(workers: int) -> Path | None:
    """Before forking the workers: a fresh folder for shared metrics and readiness markers (None for 1 worker).

    prometheus-client picks its value class when it is imported, so switching to multiprocess mode here also
    swaps the class itself; metrics are created later, in each worker, and write to files under the folder.
    """
    if workers <= 1:
        return None
    remove_stale_run_dirs(Path(tempfile.gettempdir()))
    run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
    (run_dir / "metrics").mkdir()
    (run_dir / "ready").mkdir()
    os.environ[METRICS_ENV] = str(run_dir / "metrics")
    values.ValueClass = values.MultiProcessValue()
    return run_dir


def remove_stale_run_dirs(parent: Path) -> list[Path]:
    """Delete the run folders of servers that no longer run. A master that exits removes its own (on_exit), but
    one killed with SIGKILL cannot; its pid is in the folder name, so the next server start cleans up after it."""
    removed = []
    for folder in parent.glob(f"{RUN_DIR_PREFIX}*-*"):
        pid = folder.name[len(RUN_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    return True


def multiprocess_metrics() -> bool:
    return bool(os.environ.get(METRICS_ENV))


def mark_ready(run_dir: Path) -> None:
    (Path(run_dir) / "ready" / str(os.getpid())).touch()


def ready_workers(run_dir: Path) -> int:
    return sum(1 for _ in (Path(run_dir) / "ready").iterdir())


def announce_if_all_ready(run_dir: Path | None, expected: int, model: dict[str, Any]) -> bool:
    """Print one "API ready on http://... (model X, N workers)" line when the last worker gets warm, so a person
    starting the server sees one clear moment instead of reading gunicorn's log. Only under gunicorn (which sets
    the address); with several workers the first to see all of them warm claims the line with an exclusive file."""
    url = os.environ.get(ANNOUNCE_URL_ENV)
    if not url:
        return False
    if run_dir is not None:
        if ready_workers(run_dir) < expected:
            return False
        try:
            os.close(os.open(Path(run_dir) / "announced", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
    started = float(os.environ.get(STARTED_AT_ENV) or time.time())
    plural = "s" if expected != 1 else ""
    print(f"API ready on {url} (model {model.get('version', '?')}, {expected} worker{plural}, "
          f"{model.get('backend', '?')}) after {time.time() - started:.0f} s", flush=True)
    return True


def forget_worker(run_dir: Path, pid: int) -> None:
    """gunicorn child_exit hook: a dead worker is neither ready nor counted in live gauges."""
    (Path(run_dir) / "ready" / str(pid)).unlink(missing_ok=True)
    mark_process_dead(pid, str(Path(run_dir) / "metrics"))


def remove_run_dir(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)


# gunicorn server hooks (installed by gunicorn.conf.py); `arbiter` is gunicorn's master object.

def on_starting(arbiter: Any) -> None:
    """Master, before any fork: the shared run folder, and the settings each worker's create_app reads from the
    environment (worker count for /readyz, load the model in the background, forward threads = cores / workers)."""
    if arbiter.cfg.preload_app:
        raise SystemExit("--preload is not supported: each worker must load its model after the fork "
                         "(the batcher's thread would not survive it)")
    workers = arbiter.cfg.workers
    run_dir = prepare_run_dir(workers)
    os.environ["TOMATO_WORKERS"] = str(workers)
    os.environ["TOMATO_LOAD_IN_BACKGROUND"] = "true"
    if run_dir:
        os.environ[RUN_DIR_ENV] = str(run_dir)
    else:
        os.environ.pop(RUN_DIR_ENV, None)
    os.environ.setdefault("TOMATO_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    os.environ[STARTED_AT_ENV] = str(psutil.Process().create_time())  # the "after N s" a person waited, not less
    bind = arbiter.cfg.bind[0] if arbiter.cfg.bind else ""
    if bind and not bind.startswith(("unix:", "fd:")):
        os.environ[ANNOUNCE_URL_ENV] = f"http://{bind}"


def child_exit(arbiter: Any, worker: Any) -> None:
    if os.environ.get(RUN_DIR_ENV):
        forget_worker(Path(os.environ[RUN_DIR_ENV]), worker.pid)


def on_exit(arbiter: Any) -> None:
    if os.environ.get(RUN_DIR_ENV):
        remove_run_dir(Path(os.environ[RUN_DIR_ENV]))
