"""Client side of the job API (HTTP only, no model): send a folder as one job, follow its progress with a tqdm
bar, save the CSV. Used by `python -m inference.batch FOLDER --out results.csv --cluster URL`."""
from __future__ import annotations

import csv
import io
import os
import sys
import time
from pathlib import Path

import requests
from tqdm import tqdm

POLL_S = 0.5


def _headers(token: str | None) -> dict[str, str]:
    token = token or os.environ.get("TOMATO_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check(response: requests.Response) -> requests.Response:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            detail = response.text[:500]
        raise SystemExit(f"the cluster answered {response.status_code} ({detail})")
    return response


def submit_files(url: str, files: list[Path], root: Path, token: str | None = None) -> dict:
    """POST every file as one job (names relative to `root`); returns the 202 body."""
    parts = [("file", (str(path.relative_to(root)), path.read_bytes())) for path in files]
    return _check(requests.post(f"{url.rstrip('/')}/v1/jobs", files=parts, headers=_headers(token),
                                timeout=600)).json()


def follow(url: str, status_url: str, total: int, token: str | None = None) -> dict:
    """Poll the job until it ends, advancing a tqdm bar by its `progress.done`; returns the last status."""
    with tqdm(total=total, unit="img", file=sys.stderr) as bar:
        while True:
            body = _check(requests.get(f"{url.rstrip('/')}{status_url}", headers=_headers(token), timeout=60)).json()
            bar.update(body["progress"]["done"] - bar.n)
            if body["state"] not in ("queued", "running"):
                return body
            time.sleep(POLL_S)


def score_on_cluster(url: str, files: list[Path], root: Path, out: Path, token: str | None = None) -> dict[str, int]:
    """Score `files` on the cluster at `url`, write its CSV to `out`; returns counts of ok and error rows."""
    job = submit_files(url, files, root, token)
    final = follow(url, job["status_url"], job["total"], token)
    if final["state"] != "done":
        raise SystemExit(f"job {job['job_id']} ended {final['state']}: {final.get('error') or ''}")
    text = _check(requests.get(f"{url.rstrip('/')}{job['status_url']}", params={"format": "csv"},
                               headers=_headers(token), timeout=120)).text
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    rows = list(csv.DictReader(io.StringIO(text)))
    return {"ok": sum(r["status"] == "ok" for r in rows), "error": sum(r["status"] == "error" for r in rows)}
