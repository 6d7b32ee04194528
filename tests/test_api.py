"""Every route and every client mistake through Flask's test client (tiny model: fast, same code paths)."""
from __future__ import annotations

import base64
import io
import re
import os
import re
import threading
import time

import pytest
from PIL import Image
from support import encode, png_header_bomb, sample_files
from urllib3 import encode_multipart_formdata

from flask_server import create_app


def files(*parts: tuple[bytes, str], field: str = "file") -> dict:
    return {field: [(io.BytesIO(data), name) for data, name in parts]}


def client_encoded(fields: dict) -> dict:
    """A multipart body as HTTP clients (requests, curl) encode it. Werkzeug's test client writes an empty file part
    without the line break that must precede the next boundary, which strict parsers read as no part at all."""
    body, content_type = encode_multipart_formdata(fields)
    return {"data": body, "content_type": content_type}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body


def test_predict_one_file(client, leaf_bytes):
    response = client.post("/predict", data=files((leaf_bytes, "leaf.jpg")))
    assert response.status_code == 200
    body = response.get_json()
    (prediction,) = body["predictions"]
    assert prediction["filename"] == "leaf.jpg"
    assert prediction["class_name"] in prediction["probabilities"]
    assert prediction["probability"] == max(prediction["probabilities"].values())
    assert len(prediction["top_k"]) == 3
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(prediction["timing_ms"]) == {"decode", "queue", "inference"}
    assert prediction["verdict"] in ("diagnosed", "uncertain", "not_tomato_leaf")
    assert 0 <= prediction["leaf_score"] <= 1 and "verdict_reason" in prediction
    assert body["model"]["name"] == "tiny-test-model" and len(body["model"]["sha256"]) == 64
    assert body["timing_ms"]["total"] > 0


def test_predict_several_files_in_one_forward(client):
    paths = sample_files()[:5]
    response = client.post("/predict", data=files(*[(p.read_bytes(), p.name) for p in paths]))
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert [p["filename"] for p in predictions] == [p.name for p in paths]
    assert {p["batch_size"] for p in predictions} == {5}


def test_predict_raw_image_body(client, leaf_bytes):
    response = client.post("/predict", data=leaf_bytes, content_type="image/jpeg")
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == 1


@pytest.mark.parametrize("key", ["image", "images"])
def test_predict_json_base64(client, leaf_bytes, key):
    encoded = base64.b64encode(leaf_bytes).decode()
    payload = {"image": encoded} if key == "image" else {"images": [encoded, "data:image/jpeg;base64," + encoded]}
    response = client.post("/predict", json=payload)
    assert response.status_code == 200
    assert len(response.get_json()["predictions"]) == (1 if key == "image" else 2)


def test_same_image_same_answer_in_every_request_shape(client, leaf_bytes):
    shapes = [
        client.post("/predict", data=files((leaf_bytes, "a.jpg"))),
        client.post("/predict", data=leaf_bytes, content_type="image/jpeg"),
        client.post("/predict", json={"image": base64.b64encode(leaf_bytes).decode()}),
    ]
    answers = [r.get_json()["predictions"][0]["probabilities"] for r in shapes]
    for other in answers[1:]:
        assert other == pytest.approx(answers[0], abs=1e-6)


def test_top_k_parameter(client, leaf_bytes):
    response = client.post("/predict?top_k=10", data=files((leaf_bytes, "a.jpg")))
    assert len(response.get_json()["predictions"][0]["top_k"]) == 10


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_REQUESTS = [
    # (id, request kwargs builder, status, code)
    ("no-body", lambda leaf: {}, 400, "missing_file"),
    ("wrong-field", lambda leaf: {"data": files((leaf, "a.jpg"), field="image")}, 400, "missing_file"),
    ("empty-file-part", lambda leaf: client_encoded({"file": ("a.jpg", b"", "image/jpeg")}), 400, "empty_file"),
    ("malformed-multipart", lambda leaf: {"data": b"no parts here", "content_type": "multipart/form-data; boundary=x"},
     400, "missing_file"),
    ("not-an-image", lambda leaf: {"data": files((b"just some text", "notes.txt"))}, 415, "not_an_image"),
    ("truncated", lambda leaf: {"data": files((_truncated(leaf), "half.jpg"))}, 400, "truncated_image"),
    ("bomb", lambda leaf: {"data": files((png_header_bomb(), "bomb.png"))}, 413, "image_too_large"),
    ("text-body", lambda leaf: {"data": b"hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ("bad-base64", lambda leaf: {"json": {"image": "!!!not base64!!!"}}, 400, "bad_base64"),
    ("base64-of-junk", lambda leaf: {"json": {"image": base64.b64encode(b"junk").decode()}}, 415, "not_an_image"),
    ("json-without-image", lambda leaf: {"json": {"picture": "abc"}}, 400, "missing_file"),
    ("json-not-object", lambda leaf: {"data": b"[1, 2", "content_type": "application/json"}, 400, "bad_json"),
    ("too-many-files", lambda leaf: {"data": files(*[(leaf, f"{i}.jpg") for i in range(17)])}, 400, "too_many_files"),
    ("top-k-not-int", lambda leaf: {"data": files((leaf, "a.jpg")), "query_string": {"top_k": "x"}}, 400, "bad_parameter"),
    ("top-k-too-big", lambda leaf: {"data": files((leaf, "a.jpg")), "query_string": {"top_k": 11}}, 400, "bad_parameter"),
]


@pytest.mark.parametrize("build, status, code", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(client, leaf_bytes, build, status, code):
    assert_error(client.post("/predict", **build(leaf_bytes)), status, code)
    assert client.post("/predict", data=files((leaf_bytes, "ok.jpg"))).status_code == 200


def test_a_bad_file_among_good_ones_gets_an_error_in_its_place(client, leaf_bytes):
    """A leaf plus a text file renamed .jpg: the leaf is answered, the text file gets its own error object."""
    half = _truncated(leaf_bytes)
    response = client.post("/predict", data=files((leaf_bytes, "good.jpg"), (b"just some text", "notes.jpg"),
                                                  (half, "half.jpg"), (leaf_bytes, "good2.jpg")))
    assert response.status_code == 200, response.get_data(as_text=True)
    predictions = response.get_json()["predictions"]
    assert [p["filename"] for p in predictions] == ["good.jpg", "notes.jpg", "half.jpg", "good2.jpg"]
    good, text, truncated, good2 = predictions
    assert "class_name" in good and "class_name" in good2 and "error" not in good
    assert good["batch_size"] == good2["batch_size"] == 2  # only the usable images went through the model
    assert set(text) == {"filename", "error"} and text["error"]["code"] == "not_an_image" and text["error"]["message"]
    assert set(truncated) == {"filename", "error"} and truncated["error"]["code"] == "truncated_image"


def test_a_single_bad_file_keeps_its_own_status(client):
    body = assert_error(client.post("/predict", data=files((b"junk", "bad.bin"))), 415, "not_an_image")
    assert body["error"]["message"].startswith("bad.bin: ")


def test_when_no_file_is_usable_the_first_ones_error_names_them_all(client, leaf_bytes):
    body = assert_error(client.post("/predict", data=files((b"junk", "a.txt"), (_truncated(leaf_bytes), "b.jpg"))),
                        415, "not_an_image")
    assert "none of the 2 images" in body["error"]["message"]
    assert "a.txt: " in body["error"]["message"] and "b.jpg: " in body["error"]["message"]


def test_body_over_the_limit_is_413(make_app, leaf_bytes):
    client = make_app(MAX_CONTENT_LENGTH=10_000).test_client()
    assert_error(client.post("/predict", data=files((leaf_bytes * 3, "big.jpg"))), 413, "payload_too_large")


def test_unknown_route_and_wrong_method(client):
    assert_error(client.get("/no/such/route"), 404, "not_found")
    response = client.get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.delete("/feedback"), 405, "method_not_allowed")


def test_token_is_required_when_configured(make_app, leaf_bytes):
    client = make_app(API_TOKEN="s3cret").test_client()
    assert_error(client.post("/predict", data=files((leaf_bytes, "a.jpg"))), 401, "unauthorized")
    wrong = client.post("/predict", data=files((leaf_bytes, "a.jpg")), headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "unauthorized")
    ok = client.post("/predict", data=files((leaf_bytes, "a.jpg")), headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert client.post("/predict", data=files((leaf_bytes, "a.jpg")), headers={"X-API-Token": "s3cret"}).status_code == 200
    assert client.get("/readyz").status_code == 200  # probes stay open for orchestrators


def test_full_queue_answers_429_with_retry_after(make_app, leaf_bytes):
    app = make_app(MAX_QUEUE=1, MAX_FILES=4)
    client = app.test_client()
    response = client.post("/predict", data=files(*[(leaf_bytes, f"{i}.jpg") for i in range(3)]))
    assert_error(response, 429, "overloaded")
    assert response.headers["Retry-After"] == "1"
    assert client.post("/predict", data=files((leaf_bytes, "a.jpg"))).status_code == 200


def test_request_past_its_deadline_gets_504(make_app, leaf_bytes):
    app = make_app(REQUEST_TIMEOUT_S=0.2)
    bundle = app.extensions["tomato"].bundle
    fast_engine = bundle.engine

    class SlowModel:  # a forward slower than the request deadline (a real model on an overloaded machine)
        name = "slow"

        def __call__(self, batch):
            time.sleep(1.0)
            return fast_engine(batch)

    bundle.engine = SlowModel()
    client = app.test_client()
    assert_error(client.post("/predict", data=files((leaf_bytes, "a.jpg"))), 504, "timeout")
    bundle.engine = fast_engine
    time.sleep(1.5)  # let the batcher finish the slow forward it is still in
    assert client.post("/predict", data=files((leaf_bytes, "a.jpg"))).status_code == 200


def test_config_from_environment(monkeypatch, tiny_bundle_path, tmp_path):
    monkeypatch.setenv("TOMATO_MAX_FILES", "2")
    monkeypatch.setenv("TOMATO_TOP_K", "5")
    app = create_app({"MODEL_PATH": str(tiny_bundle_path), "FEEDBACK_DIR": str(tmp_path)})
    assert app.config["MAX_FILES"] == 2 and app.config["TOP_K"] == 5
    explicit = create_app({"MODEL_PATH": str(tiny_bundle_path), "FEEDBACK_DIR": str(tmp_path), "MAX_FILES": 3})
    assert explicit.config["MAX_FILES"] == 3  # explicit config beats the environment


def test_probes_and_model_info(client):
    assert client.get("/livez").get_json() == {"status": "alive"}
    ready = client.get("/readyz").get_json()
    assert ready["status"] == "ready" and ready["model"]["name"] == "tiny-test-model"
    info = client.get("/v1/model").get_json()
    assert len(info["classes"]) == 10 and info["input_size"] == 64
    assert {"class_name": "healthy", "display_name": "Healthy"} in info["classes"]
    usage = client.get("/").get_json()
    assert "curl" in usage["usage"] and "POST /predict" in usage["endpoints"]


def test_readyz_is_503_until_the_model_is_loaded(make_app, monkeypatch):
    release = threading.Event()
    import inference.bundle

    real_load = inference.bundle.load_bundle

    def slow_load(*args, **kwargs):
        release.wait(10)
        return real_load(*args, **kwargs)

    monkeypatch.setattr("flask_server.load_bundle", slow_load)
    client = make_app(LOAD_IN_BACKGROUND=True).test_client()
    assert_error(client.get("/readyz"), 503, "not_ready")
    assert_error(client.post("/predict", data=b"x", content_type="image/jpeg"), 503, "not_ready")
    assert client.get("/livez").status_code == 200
    release.set()
    client.application.extensions["tomato"].ready.wait(10)
    assert client.get("/readyz").status_code == 200


def test_the_loaded_model_is_out_of_the_garbage_collectors_scans(make_app):
    """A full collection must not walk everything torch and the model brought in (a ~220 ms pause per worker)."""
    import gc

    network = make_app().extensions["tomato"].bundle.network
    assert gc.get_freeze_count() > 0
    assert not any(obj is network for obj in gc.get_objects())  # frozen objects sit outside every generation


def test_readyz_waits_for_every_worker_process(make_app, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "ready").mkdir(parents=True)
    client = make_app(RUN_DIR=str(run_dir), WORKERS=2).test_client()  # this process is warm, its sibling is not
    answer = client.get("/readyz")
    assert_error(answer, 503, "not_ready")
    assert "1 of 2" in answer.get_json()["error"]["message"] and answer.headers["Retry-After"] == "2"
    (run_dir / "ready" / "999999").touch()  # what the sibling writes once its model is warm
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["workers"] == 2


def test_a_killed_servers_run_folder_is_removed_by_the_next_start(tmp_path):
    """The master's pid is in its run folder's name; folders of pids that no longer exist are swept."""
    import subprocess
    import sys

    from serving.workers import RUN_DIR_PREFIX, remove_stale_run_dirs

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid no longer exists
    stale = tmp_path / f"{RUN_DIR_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{RUN_DIR_PREFIX}{os.getpid()}-def"
    unrelated = tmp_path / f"{RUN_DIR_PREFIX}notapid-ghi"
    for folder in (stale, live, unrelated):
        (folder / "metrics").mkdir(parents=True)
        (folder / "metrics" / "counter_1.db").write_bytes(b"x")

    assert remove_stale_run_dirs(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and unrelated.exists()


def test_default_worker_count_is_one_per_core_capped_and_one_on_a_gpu():
    from serving.workers import default_worker_count

    assert default_worker_count(uses_cuda=False, cores=2) == 2
    assert default_worker_count(uses_cuda=False, cores=64) == 4
    assert default_worker_count(uses_cuda=False, cores=1) == 1
    assert default_worker_count(uses_cuda=True, cores=16) == 1


def test_metrics_count_requests_and_batches(client, leaf_bytes):
    client.post("/predict", data=files((leaf_bytes, "a.jpg"), (leaf_bytes, "b.jpg")))
    client.get("/nope")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'tomato_http_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert 'tomato_http_requests_total{endpoint="unmatched",method="GET",status="404"} 1.0' in text
    assert "tomato_batch_size_bucket" in text and "tomato_batch_size_sum 2.0" in text
    assert "tomato_queue_depth 0.0" in text
    assert "tomato_images_classified_total 2.0" in text
    verdict_counts = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("tomato_verdicts_total{")]
    assert sum(verdict_counts) == 2.0


def test_openapi_lists_exactly_the_served_routes(app, client):
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    served = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower()) for rule in app.url_map.iter_rules()
              if rule.endpoint != "static" for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == documented
    for error_status in ("400", "413", "415", "429", "504"):
        assert error_status in spec["paths"]["/predict"]["post"]["responses"]


def test_feedback_store_is_created_on_first_use_only(app, client, leaf_bytes):
    """Runtime data stays out of the project: starting and predicting writes no feedback folder or database."""
    folder = app.extensions["tomato"].feedback.folder
    client.post("/predict", data={"file": (io.BytesIO(leaf_bytes), "leaf.jpg")})
    assert not folder.exists()
    response = client.post("/feedback", data={"file": (io.BytesIO(leaf_bytes), "leaf.jpg"), "correct_class": "healthy"})
    assert response.status_code == 201
    assert (folder / "feedback.sqlite3").is_file() and len(list((folder / "images").iterdir())) == 1


def test_feedback_is_stored(app, client, leaf_bytes):
    response = client.post("/feedback", data={"file": (io.BytesIO(leaf_bytes), "../../etc/passwd"),
                                              "correct_class": "Early_blight", "predicted_class": "Late_blight",
                                              "comment": "spots were concentric"})
    assert response.status_code == 201
    item_id = response.get_json()["id"]
    store = app.extensions["tomato"].feedback
    (row,) = store.rows()
    assert row["id"] == item_id and row["correct"] == "Early_blight" and row["predicted"] == "Late_blight"
    saved = store.images / row["image_file"]
    assert saved.read_bytes() == leaf_bytes and saved.parent == store.images and saved.suffix == ".jpg"


def test_feedback_can_say_the_photo_is_not_a_tomato_leaf(app, client, leaf_bytes):
    response = client.post("/feedback", data={"file": (io.BytesIO(leaf_bytes), "teapot.jpg"),
                                              "correct_class": "not_tomato_leaf", "predicted_class": "Early_blight"})
    assert response.status_code == 201
    (row,) = app.extensions["tomato"].feedback.rows()
    assert row["correct"] == "not_tomato_leaf"


@pytest.mark.parametrize(
    "form, status, code",
    [
        ({"correct_class": "healthy"}, 400, "missing_file"),
        ({"file": (io.BytesIO(b"junk"), "a.jpg"), "correct_class": "healthy"}, 415, "not_an_image"),
        ({"file": "LEAF", "correct_class": "Purple_rot"}, 400, "bad_parameter"),
        ({"file": "LEAF"}, 400, "bad_parameter"),
    ],
    ids=["no-file", "not-image", "unknown-class", "no-class"],
)
def test_feedback_bad_input(app, client, leaf_bytes, form, status, code):
    form = {k: (io.BytesIO(leaf_bytes), "a.jpg") if v == "LEAF" else v for k, v in form.items()}
    assert_error(client.post("/feedback", data=form), status, code)
    assert app.extensions["tomato"].feedback.rows() == []


def test_concurrent_feedback_writes_are_all_kept(app, client, leaf_bytes):
    small = encode(Image.new("RGB", (8, 8), (0, 128, 0)), "PNG")

    def post(i: int) -> int:
        return app.test_client().post("/feedback", data={"file": (io.BytesIO(small), f"{i}.png"),
                                                          "correct_class": "healthy", "comment": str(i)}).status_code

    threads = [threading.Thread(target=post, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = app.extensions["tomato"].feedback.rows()
    assert sorted(int(r["comment"]) for r in rows) == list(range(24))
    assert len({r["image_file"] for r in rows}) == 24
