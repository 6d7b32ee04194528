"""Bulk jobs (jobs/): real redis-server, real model workers on the shipped bundle, real HTTP.

Limits, cancel, TTL and auth run on the tiny model's app with queues no worker consumes (nothing is scored there);
the end-to-end, fault and client tests go through `cluster_api` (a live server) and the session's two workers.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import re
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from cluster_support import JobWorker, wait_for
from PIL import Image
from support import ROOT, class_of, sample_files

from inference.crops import crop, normalise
from inference.rows import FIELDS
from jobs.settings import JobSettings
from jobs.store import JobStore
from model.transforms import PreprocessConfig, build_transform

JOB_TIMEOUT_S = 240  # a job of ~100 images on two busy cores, including a redelivery


def leaf_parts(count: int) -> list[tuple[str, bytes]]:
    """`count` sample photos (cycled), with unique names that keep their class: 007_Late_blight_1.jpg."""
    cycle = itertools.cycle(sample_files())
    return [(f"{i:03d}_{path.name}", path.read_bytes()) for i, path in zip(range(count), cycle)]


def form(parts: list[tuple[str, bytes]], field: str = "file") -> dict:
    """Flask test-client multipart data."""
    return {field: [(io.BytesIO(data), name) for name, data in parts]}


def post_live(url: str, parts: list[tuple[str, bytes]], **kwargs) -> requests.Response:
    return requests.post(f"{url}/v1/jobs", files=[("file", (name, data)) for name, data in parts], timeout=120,
                         **kwargs)


def wait_finished(url: str, status_url: str, timeout: float = JOB_TIMEOUT_S) -> dict:
    def finished():
        body = requests.get(url + status_url, timeout=30).json()
        return body if body["state"] in ("done", "failed", "cancelled") else None

    return wait_for(finished, timeout, f"job {status_url}", interval=0.2)


def expected_class(file: str) -> str:
    return class_of(Path(file.split("_", 1)[1] if file[:3].isdigit() else file))


def zip_of(parts: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in parts:
            archive.writestr(name, data)
    return buf.getvalue()


def tar_of(parts: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for name, data in parts:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# ---------------------------------------------------------------- pieces without Redis


@pytest.mark.parametrize("cfg", [PreprocessConfig(image_size=160, resize_size=160),
                                 PreprocessConfig(image_size=160, resize_size=182, mean=(0.4, 0.5, 0.6))])
def test_crop_then_normalise_is_the_serving_transform(cfg):
    image = Image.open(sample_files()[3]).convert("RGB")
    cropped = crop(cfg, image)
    assert cropped.dtype == np.uint8 and cropped.shape == (3, 160, 160)
    split = normalise(cfg, cropped[None])[0]
    assert np.allclose(split.numpy(), build_transform(cfg)(image).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        normalise(PreprocessConfig(image_size=224, resize_size=224), cropped[None])


def test_settings_come_from_flask_config_and_worker_environment():
    assert JobSettings.from_config({"JOBS_CHUNK_SIZE": "4", "JOBS_QUEUE": "q"}).chunk_size == 4
    env = JobSettings.from_env({"TOMATO_JOBS_VISIBILITY_TIMEOUT_S": "7", "OTHER": "x"})
    assert env.visibility_timeout_s == 7 and env.chunk_size == JobSettings().chunk_size


def test_result_writes_are_idempotent(redis_server):
    store = JobStore(redis_server.client(2), ttl_s=60)
    job = store.create(["a.jpg", "b.jpg", "c.jpg"], 160)
    assert store.write_results(job, {0: {"status": "ok", "n": 1}, 1: {"status": "ok", "n": 1}}) == 2
    assert store.write_results(job, {0: {"status": "ok", "n": 2}, 1: {"status": "ok", "n": 2}}) == 0  # redelivery
    meta = store.meta(job)
    assert (meta["state"], meta["duplicates"], store.done_count(job)) == ("queued", "2", 2)
    assert [r["n"] for r in store.results(job)] == [1, 1]  # the first answer stays
    assert store.write_results(job, {2: {"status": "ok", "n": 1}}) == 1
    assert store.meta(job)["state"] == "done"
    assert 0 < store.redis.ttl(store.key(job, "results")) <= 60


# ---------------------------------------------------------------- API limits on queues no worker consumes


@pytest.fixture
def idle_jobs(make_app, redis_server, request):
    """Factory: a tiny-model app whose jobs go to a queue of its own in Redis db 1 (nobody scores them)."""
    queue = f"idle-{request.node.name}"[:80]

    def factory(**overrides):
        return make_app(JOBS_REDIS_URL=redis_server.url(1), JOBS_QUEUE=queue, **overrides)

    yield factory
    redis_server.client(1).delete(queue)


def test_a_job_too_large_gets_413_naming_the_limit(idle_jobs):
    client = idle_jobs(JOBS_MAX_IMAGES=3).test_client()
    for body in (form(leaf_parts(4)), form(leaf_parts(6)), {"archive": (io.BytesIO(zip_of(leaf_parts(4))), "a.zip")}):
        response = client.post("/v1/jobs", data=body)
        assert response.status_code == 413, response.get_json()
        error = response.get_json()["error"]
        assert error["code"] == "too_many_images" and "the limit is 3 images per job" in error["message"]
    assert client.post("/v1/jobs", data=form(leaf_parts(3))).status_code == 202


def test_a_full_queue_gets_429_with_retry_after(idle_jobs):
    client = idle_jobs(JOBS_MAX_QUEUED_IMAGES=2, JOBS_CHUNK_SIZE=1).test_client()
    assert client.post("/v1/jobs", data=form(leaf_parts(2))).status_code == 202  # 2 chunks now wait
    response = client.post("/v1/jobs", data=form(leaf_parts(1)))
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert response.get_json()["error"]["code"] == "queue_full"


def test_cancel_a_queued_job(idle_jobs, redis_server):
    client = idle_jobs(JOBS_CHUNK_SIZE=2).test_client()
    job = client.post("/v1/jobs", data=form(leaf_parts(5))).get_json()
    assert job["total"] == 5 and client.get(job["status_url"]).get_json()["state"] == "queued"
    inputs = list(redis_server.client(1).scan_iter(match=f"tomato:job:{job['job_id']}:input:*"))
    assert len(inputs) == 3  # 2 + 2 + 1 crops waiting
    response = client.delete(job["status_url"])
    assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
    assert client.get(job["status_url"]).get_json()["state"] == "cancelled"
    assert not list(redis_server.client(1).scan_iter(match=f"tomato:job:{job['job_id']}:input:*"))
    again = client.delete(job["status_url"])
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "job_finished"
    assert client.get(job["status_url"] + "?format=csv").status_code == 409


def test_a_chunk_whose_message_was_lost_is_sent_again(idle_jobs, redis_server):
    app = idle_jobs(JOBS_CHUNK_SIZE=2, JOBS_VISIBILITY_TIMEOUT_S=1, JOBS_RESTORE_INTERVAL_S=1)
    client, queue, r = app.test_client(), app.config["JOBS_QUEUE"], redis_server.client(1)
    job = client.post("/v1/jobs", data=form(leaf_parts(3))).get_json()
    assert r.llen(queue) == 2
    time.sleep(4.5)  # past the stall bound, 2 x (1 + 1) s: the messages are still queued, so nothing is re-sent
    assert client.get(job["status_url"]).get_json()["chunks_resent"] == 0 and r.llen(queue) == 2
    r.delete(queue)  # both task messages lost, as when Redis dies between a worker's BRPOP and its unacked record
    wait_for(lambda: client.get(job["status_url"]).get_json()["chunks_resent"] == 2, 30, "the lost chunks again")
    assert r.llen(queue) == 2


def test_results_expire_after_the_ttl(idle_jobs):
    client = idle_jobs(JOBS_RESULT_TTL_S=1).test_client()
    job = client.post("/v1/jobs", data=form(leaf_parts(1))).get_json()
    assert client.get(job["status_url"]).status_code == 200
    wait_for(lambda: client.get(job["status_url"]).status_code == 404, 30, "the job to expire", interval=0.2)
    error = client.get(job["status_url"]).get_json()["error"]
    assert error["code"] == "job_not_found" and "expired" in error["message"]


def test_job_routes_need_the_token_when_one_is_set(idle_jobs):
    client = idle_jobs(API_TOKEN="s3cret-token-for-jobs").test_client()
    assert client.post("/v1/jobs", data=form(leaf_parts(1))).status_code == 401
    assert client.get("/v1/jobs/" + "0" * 32).status_code == 401
    response = client.post("/v1/jobs", data=form(leaf_parts(1)), headers={"Authorization": "Bearer s3cret-token-for-jobs"})
    assert response.status_code == 202


@pytest.mark.parametrize("body, content_type, status, code", [
    ({"other": (io.BytesIO(b"x"), "x.jpg")}, None, 400, "missing_file"),
    (b"plain text", "text/plain", 415, "unsupported_media_type"),
    (b"not an archive at all", "application/zip", 415, "not_an_archive"),
    (zip_of([(".hidden.jpg", b"x")]), "application/zip", 400, "missing_file"),
])
def test_unusable_job_requests_get_json_errors(idle_jobs, body, content_type, status, code):
    client = idle_jobs().test_client()
    response = client.post("/v1/jobs", data=body, content_type=content_type)
    assert response.status_code == status and response.get_json()["error"]["code"] == code


def test_unknown_job_and_bad_format(idle_jobs):
    client = idle_jobs().test_client()
    assert client.get("/v1/jobs/" + "f" * 32).status_code == 404
    assert client.delete("/v1/jobs/" + "f" * 32).status_code == 404
    job = client.post("/v1/jobs", data=form(leaf_parts(1))).get_json()
    response = client.get(job["status_url"] + "?format=xml")
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "bad_parameter"


def test_redis_unreachable_gives_503_with_retry_after(make_app):
    client = make_app().test_client()  # conftest points jobs at a closed port
    for response in (client.post("/v1/jobs", data=form(leaf_parts(1))), client.get("/v1/jobs/" + "0" * 32)):
        assert response.status_code == 503 and response.headers["Retry-After"] == "2"
        assert response.get_json()["error"]["code"] == "queue_unavailable"
    assert "tomato_jobs_queue_up 0.0" in client.get("/metrics").get_data(as_text=True)


# ---------------------------------------------------------------- real workers


def test_a_job_through_real_workers_answers_every_image_right(cluster_api):
    parts = [(p.name, p.read_bytes()) for p in sample_files()] + [("notes.txt", b"not a photo")]
    response = post_live(cluster_api.url, parts)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["total"] == len(parts) and response.headers["Location"] == job["status_url"]
    body = wait_finished(cluster_api.url, job["status_url"])
    assert body["state"] == "done", body
    assert body["progress"]["done"] == body["progress"]["total"] == len(parts)
    results = body["results"]
    assert [r["file"] for r in results] == [name for name, _ in parts]  # upload order
    for result in results[:-1]:
        assert result["status"] == "ok" and result["class_name"] == class_of(Path(result["file"])), result
        assert result["verdict"] == "diagnosed"
    assert results[-1]["status"] == "error" and results[-1]["error"]["code"] == "not_an_image"

    csv_response = requests.get(f"{cluster_api.url}{job['status_url']}?format=csv", timeout=30)
    assert csv_response.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in csv_response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(csv_response.text)))
    assert list(rows[0]) == FIELDS and len(rows) == len(parts)
    assert all(row["class_name"] == class_of(Path(row["file"])) for row in rows[:-1])
    assert rows[-1]["status"] == "error" and "not_an_image" in rows[-1]["error"] and rows[-1]["verdict"] == ""


def test_zip_and_tar_archives_are_jobs(cluster_api):
    parts = leaf_parts(5) + [("__MACOSX/._junk.jpg", b"x"), (".DS_Store", b"x")]
    for data, content_type in ((zip_of(parts), "application/zip"), (tar_of(parts), "application/x-tar")):
        response = requests.post(f"{cluster_api.url}/v1/jobs", data=data, headers={"Content-Type": content_type},
                                 timeout=60)
        assert response.status_code == 202 and response.json()["total"] == 5, response.text
        body = wait_finished(cluster_api.url, response.json()["status_url"])
        assert [r["class_name"] for r in body["results"]] == [expected_class(name) for name, _ in parts[:5]]


def test_metrics_show_queue_jobs_and_workers(cluster_api):
    text = requests.get(f"{cluster_api.url}/metrics", timeout=30).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("tomato_jobs")}
    assert values["tomato_jobs_queue_up"] == 1.0
    assert values["tomato_jobs_workers"] >= 2
    assert "tomato_jobs_queue_length" in values and values['tomato_jobs{state="done"}'] >= 1


def test_batch_cli_scores_a_folder_on_the_cluster(cluster_api, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name, data in leaf_parts(6):
        (folder / "sub" / name).write_bytes(data)
    (folder / "notes.txt").write_text("no photo")
    out = tmp_path / "results.csv"
    run = subprocess.run([sys.executable, "-m", "inference.batch", str(folder), "--out", str(out),
                          "--cluster", cluster_api.url], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "7/7" in run.stderr  # the tqdm bar, fed by the job's progress
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == FIELDS and len(rows) == 7
    by_file = {row["file"]: row for row in rows}
    assert by_file["notes.txt"]["status"] == "error"
    for name, _ in leaf_parts(6):
        assert by_file[f"sub/{name}"]["class_name"] == expected_class(name)


def test_kill_9_a_worker_mid_chunk_loses_and_duplicates_nothing(cluster_api, job_workers, redis_server,
                                                                shipped_bundle_path, tmp_path):
    client = redis_server.client()
    owners = {pid: worker for worker in job_workers for pid in worker.model_pids()}
    parts = leaf_parts(96)  # 12 chunks of 8
    job = post_live(cluster_api.url, parts).json()
    working = [f"tomato:job:{job['job_id']}:working:{chunk}" for chunk in range(12)]

    def freeze_one_mid_chunk():
        for key, pid in zip(working, client.mget(working)):
            if pid and int(pid) in owners:
                owner = owners[int(pid)]
                owner.signal_group(signal.SIGSTOP)
                if client.exists(key):  # frozen before it finished: it holds the chunk, unacknowledged
                    return owner
                owner.signal_group(signal.SIGCONT)
        return None

    victim = wait_for(freeze_one_mid_chunk, 120, "a worker in the middle of a chunk", interval=0.002)
    assert client.hlen("unacked") >= 1
    victim.kill()
    replacement = JobWorker(shipped_bundle_path, redis_server.url(), tmp_path, "w-new")
    job_workers[job_workers.index(victim)] = replacement  # the session fixture stops whatever the list holds

    body = wait_finished(cluster_api.url, job["status_url"])
    assert body["state"] == "done", body
    results = body["results"]
    assert [r["index"] for r in results] == list(range(96))  # every image once
    assert body["progress"]["done"] == 96
    assert [r["class_name"] for r in results] == [expected_class(name) for name, _ in parts]
    assert body["attempts"] >= 13  # the killed chunk was taken again
    replacement.wait_ready()


def test_a_worker_that_cannot_load_the_model_takes_no_task(make_app, redis_server, tmp_path):
    queue = "broken-model"
    client = make_app(JOBS_REDIS_URL=redis_server.url(), JOBS_QUEUE=queue).test_client()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"this is not a model bundle")
    job = client.post("/v1/jobs", data=form(leaf_parts(2))).get_json()  # queued before the worker starts
    assert redis_server.client().llen(queue) == 1
    worker = JobWorker(broken, redis_server.url(), tmp_path, "broken", extra_env={"TOMATO_JOBS_QUEUE": queue})
    try:
        worker.process.wait(120)
        assert "the model failed to load" in worker.log()
        assert worker.model_pids() == set()
        assert redis_server.client().llen(queue) == 1  # the chunk is still waiting for a worker that can score it
        assert client.get(job["status_url"]).get_json()["state"] == "queued"
    finally:
        worker.stop()
        redis_server.client().delete(queue)


def test_a_redis_restart_between_submissions_loses_no_job(cluster_api, job_workers, redis_server, make_app):
    idle = make_app(JOBS_REDIS_URL=redis_server.url(), JOBS_QUEUE="restart-idle").test_client()
    waiting = idle.post("/v1/jobs", data=form(leaf_parts(2))).get_json()
    finished = wait_finished(cluster_api.url, post_live(cluster_api.url, leaf_parts(4)).json()["status_url"])
    in_flight = post_live(cluster_api.url, leaf_parts(64)).json()  # chunks still being scored when Redis goes
    redis_server.stop()
    try:
        down = post_live(cluster_api.url, leaf_parts(1))
        assert down.status_code == 503 and down.headers["Retry-After"]
        assert down.json()["error"]["code"] == "queue_unavailable"
        assert requests.get(f"{cluster_api.url}/v1/jobs/{finished['job_id']}", timeout=30).status_code == 503
        assert "tomato_jobs_queue_up 0.0" in requests.get(f"{cluster_api.url}/metrics", timeout=30).text
    finally:
        redis_server.start()
    again = requests.get(f"{cluster_api.url}/v1/jobs/{finished['job_id']}", timeout=30).json()
    assert again["state"] == "done" and len(again["results"]) == 4
    assert idle.get(waiting["status_url"]).get_json()["state"] == "queued"
    assert redis_server.client().llen("restart-idle") == 1
    redis_server.client().delete("restart-idle")
    interrupted = wait_finished(cluster_api.url, in_flight["status_url"])  # its chunks came back after the restart
    assert interrupted["state"] == "done" and [r["index"] for r in interrupted["results"]] == list(range(64))
    after = post_live(cluster_api.url, leaf_parts(3))
    assert after.status_code == 202
    body = wait_finished(cluster_api.url, after.json()["status_url"])  # the workers reconnected by themselves
    assert body["state"] == "done" and [r["status"] for r in body["results"]] == ["ok"] * 3


def test_the_readme_job_examples_work(cluster_api):
    """The README's bulk-job curl lines, in order, with the real job id and archive in place of the placeholders."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Bulk jobs.*?```sh\n(.*?)```", readme, flags=re.S).group(1)
    curls = [line.split("  #")[0] for line in block.splitlines() if line.startswith("curl ")]
    assert len(curls) == 5
    archive = ROOT / "photos.zip"
    job_id = ""
    try:
        archive.write_bytes(zip_of(leaf_parts(2)))
        for command in curls:
            command = command.replace("http://127.0.0.1:5000", cluster_api.url).replace("JOB_ID", job_id)
            run = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=120)
            body, status = run.stdout.rsplit("\n", 1)
            if "-X DELETE" in command:
                assert status == "409"  # the job is done by now: nothing to cancel
            elif "/v1/jobs/" in command:
                assert status == "200" and ("format=csv" not in command or body.startswith("file,status,verdict"))
            else:
                assert status == "202", run.stdout
                job_id = json.loads(body)["job_id"]
                wait_finished(cluster_api.url, f"/v1/jobs/{job_id}")
    finally:
        archive.unlink(missing_ok=True)
