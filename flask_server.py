"""Tomato-leaf disease classifier: the REST API.

Run `python flask_server.py` (gunicorn, 127.0.0.1:5000) or import `create_app` for tests and WSGI servers.
Configuration: built-in defaults < environment variables prefixed TOMATO_ (e.g. TOMATO_MAX_FILES=4)
< the mapping passed to `create_app`.
"""
from __future__ import annotations

import argparse
import gc
import os
import runpy
import threading
import time
from pathlib import Path
from typing import Any

import serving  # first: it keeps Triton out of the server (serving/__init__.py)
import torch
from flask import Flask, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from inference import DEFAULT_BUNDLE_PATH, InvalidImage, MicroBatcher, ModelBundle, decode_image, load_bundle
from inference.predict import explain_prediction, preprocess
from jobs.api import register as register_jobs
from model.verdict import NOT_A_TOMATO_LEAF
from serving import kserve_v2
from serving.auth import require_token, token_from_environment, validate_token
from serving.errors import IMAGE_ERROR_STATUS, ApiError
from serving.feedback import FeedbackStore, FeedbackStoreFull
from serving.http_errors import register as register_http_layer_errors
from serving.metrics import create_metrics
from serving.multipart import ApiRequest
from serving.openapi import openapi_spec
from serving.swap import ModelSwapper, served_versions
from serving.scoring import count_answers, decode_or_error, parse_flag, parse_top_k, submit, wait_all
from serving.uploads import read_uploads
from serving.workers import announce_if_all_ready, mark_ready, ready_workers

GUNICORN_CONFIG = Path(__file__).resolve().parent / "gunicorn.conf.py"

DEFAULTS: dict[str, Any] = {
    "MODEL_PATH": str(DEFAULT_BUNDLE_PATH),  # the shipped bundle
    "DEVICE": "auto",  # "auto" = CUDA when available, else CPU
    "BACKEND": "auto",  # forward engine: "auto" = ONNX Runtime on the CPU (about 2x eager), eager on CUDA
    "TOP_K": 3,  # default length of each prediction's top-k list (?top_k= overrides, 1..classes)
    "MAX_CONTENT_LENGTH": 20 * 1024 * 1024,  # bytes per request; Flask answers 413 above it
    "MAX_IMAGE_PIXELS": 50_000_000,  # decoded size limit per image (decompression bombs get 413)
    "MAX_FILES": 16,  # images per request
    "MAX_BATCH_SIZE": 8,  # images per model forward (bigger batches barely help on 2 cores and delay everyone)
    "BATCH_WAIT_MS": 2.0,  # how long a forming batch waits for images other requests are still decoding
    "MAX_QUEUE": 64,  # images waiting for the batcher; beyond it requests get 429
    "REQUEST_TIMEOUT_S": 10.0,  # a request still waiting after this gets 504
    "TORCH_THREADS": 0,  # intra-op threads for the forward (torch and ONNX Runtime); 0 = number of CPU cores
    "RUN_DIR": None,  # set by gunicorn's on_starting hook for several workers: shared readiness markers
    "WORKERS": 1,  # worker processes that must be warm before /readyz says 200
    "API_TOKEN": None,  # when set, POST endpoints need "Authorization: Bearer <token>" (serving/auth.py)
    "FEEDBACK_DIR": "feedback",  # where /feedback stores images and feedback.sqlite3
    "FEEDBACK_MAX_ITEMS": 10_000,  # reports the store keeps; beyond it /feedback answers 507
    "FEEDBACK_MAX_BYTES": 1 << 30,  # image bytes the store keeps (1 GiB); beyond it /feedback answers 507
    "LOAD_IN_BACKGROUND": False,  # True: start serving at once, /readyz says 503 until the model is warm
}


class ServiceState:
    """The model, its batcher and the feedback store: created once per process, shared by request threads."""

    def __init__(self, app: Flask) -> None:
        self.config = app.config
        self.serving: tuple[ModelBundle, MicroBatcher] | None = None  # replaced as one by a model swap
        self.load_error: str | None = None
        self.ready = threading.Event()
        self.metrics = create_metrics()
        self.feedback = FeedbackStore(Path(app.config["FEEDBACK_DIR"]), max_items=int(app.config["FEEDBACK_MAX_ITEMS"]),
                                      max_bytes=int(app.config["FEEDBACK_MAX_BYTES"]))
        # SIGHUP (relayed by gunicorn's master) loads MODEL_PATH again without a failed request (serving/swap.py)
        self.swapper = ModelSwapper(self, grace_s=float(app.config["REQUEST_TIMEOUT_S"]) + 30.0)

    @property
    def bundle(self) -> ModelBundle | None:
        return self.serving[0] if self.serving else None

    @property
    def batcher(self) -> MicroBatcher | None:
        return self.serving[1] if self.serving else None

    def load(self) -> None:
        try:
            threads = int(self.config["TORCH_THREADS"]) or os.cpu_count() or 1
            torch.set_num_threads(threads)
            bundle = load_bundle(self.config["MODEL_PATH"], device=self.config["DEVICE"], warmup=True,
                                 backend=str(self.config["BACKEND"]), threads=threads)
            self.activate(bundle)
            # Move everything loaded so far (torch, ONNX Runtime, the model: ~380,000 objects) out of the garbage
            # collector's reach: a full collection then scans only what requests create, about 1 ms instead of
            # a ~220 ms pause that stalls every request thread of this worker (BENCHMARKS.md).
            gc.collect()
            gc.freeze()
            run_dir = Path(self.config["RUN_DIR"]) if self.config["RUN_DIR"] else None
            announce_if_all_ready(run_dir, int(self.config["WORKERS"]), bundle.describe())
        except Exception as exc:  # reported by /readyz and every /predict instead of crashing the worker
            self.load_error = f"{type(exc).__name__}: {exc}"
            raise

    def activate(self, bundle: ModelBundle) -> None:
        """Serve `bundle` from now on: its own batcher, then one assignment that every new request sees whole."""
        batcher = MicroBatcher(
            bundle,
            max_batch_size=int(self.config["MAX_BATCH_SIZE"]),
            max_wait_ms=float(self.config["BATCH_WAIT_MS"]),
            max_queue=int(self.config["MAX_QUEUE"]),
            on_batch=self.observe_batch,
        )
        self.serving = (bundle, batcher)
        self.load_error = None
        self.ready.set()
        if self.config["RUN_DIR"]:
            mark_ready(Path(self.config["RUN_DIR"]))
        self.swapper.publish()

    def observe_batch(self, size: int, seconds: float) -> None:
        """Called by the batcher after each forward."""
        self.metrics.observe_batch(size, seconds)
        self.update_queue_depth()

    def update_queue_depth(self) -> None:
        self.metrics.queue_depth.set(self.batcher.queue_depth if self.batcher else 0)

    def workers_ready(self) -> tuple[int, int]:
        """(warm worker processes, expected), asked once this process is ready: (1, 1) without a shared run dir."""
        if not self.config["RUN_DIR"]:
            return 1, 1
        return ready_workers(Path(self.config["RUN_DIR"])), int(self.config["WORKERS"])

    def require_ready(self) -> tuple[ModelBundle, MicroBatcher]:
        """The (bundle, batcher) pair every request uses from start to end, even while a swap lands."""
        serving = self.serving
        if not self.ready.is_set() or serving is None:
            reason = f"model failed to load: {self.load_error}" if self.load_error else "model is still loading"
            raise ApiError(503, "not_ready", reason, {"Retry-After": "2"})
        return serving


def state() -> ServiceState:
    return current_app.extensions["tomato"]


def image_error(upload: Any, exc: InvalidImage) -> dict[str, Any]:
    """A bad file's place in `predictions` when other files of the same request were answered."""
    return {"filename": upload.filename, "error": {"code": exc.code, "message": str(exc)}}


def none_usable(uploads: list[Any], errors: dict[int, InvalidImage]) -> ApiError:
    """No image of the request could be used: the first bad file's status and code (a single bad file gets exactly
    the error it always got); the message names every file."""
    first = errors[0]
    message = "; ".join(f"{uploads[i].filename}: {errors[i]}" for i in sorted(errors))
    if len(uploads) > 1:
        message = f"none of the {len(uploads)} images could be used: {message}"
    return ApiError(IMAGE_ERROR_STATUS.get(first.code, 400), first.code, message)


def register_routes(app: Flask) -> None:
    @app.get("/")
    def index() -> Response:
        return jsonify(
            service="tomato-leaf disease classifier",
            usage='curl -F "file=@leaf.jpg" http://HOST:PORT/predict',
            endpoints={"POST /predict": "classify one or more leaf photos", "POST /feedback": "report a wrong answer",
                       "GET /v1/model": "model card summary", "GET /livez": "process alive",
                       "GET /readyz": "model loaded and warm", "GET /metrics": "Prometheus metrics",
                       "GET /openapi.json": "OpenAPI 3 description",
                       "POST /v2/models/<name>/infer": "Open Inference Protocol (KServe v2); GET /v2 for the rest"},
        )

    @app.get("/livez")
    def livez() -> Response:
        return jsonify(status="alive")

    @app.get("/readyz")
    def readyz() -> Response:
        bundle, _ = state().require_ready()
        warm, expected = state().workers_ready()
        if warm < expected:
            raise ApiError(503, "not_ready", f"{warm} of {expected} worker processes have their model warm",
                           {"Retry-After": "2"})
        return jsonify(status="ready", workers=expected, model=bundle.describe(),
                       models=served_versions(state().swapper.all_records()))

    @app.get("/v1/model")
    def model_info() -> Response:
        bundle, _ = state().require_ready()
        return jsonify(
            **bundle.describe(),
            classes=[{"class_name": c, "display_name": d} for c, d in zip(bundle.class_names, bundle.display_names)],
            input_size=bundle.preprocess.image_size,
            preprocess=bundle.preprocess.to_dict(),
            temperature=bundle.temperature,
            verdict_rule=bundle.verdict_rule.to_dict(),
            metrics={k: v for k, v in bundle.metrics.items() if k != "history"},
            provenance={k: v for k, v in bundle.provenance.items() if k != "train_args"},
        )

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(state().metrics.render(), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi() -> Response:
        bundle = state().bundle
        return jsonify(openapi_spec(bundle.class_names if bundle else None, int(current_app.config["MAX_FILES"]),
                                    (bundle.name, bundle.version) if bundle else None))

    @app.post("/predict")
    def predict() -> Response:
        require_token()
        bundle, batcher = state().require_ready()
        top_k = parse_top_k(len(bundle.class_names))
        explain = parse_flag("explain", request.args.get("explain"))
        uploads = read_uploads(request, int(current_app.config["MAX_FILES"]))
        decode_started = time.perf_counter()
        tensors, decode_ms, errors = [], [], {}  # errors: upload index -> why that file could not be used
        with batcher.incoming(len(uploads)) as announcement:  # a batch being gathered may wait for these
            for index, upload in enumerate(uploads):  # decoded here, in the request thread, while the batcher runs
                started = time.perf_counter()
                try:
                    image = decode_image(upload.data, max_pixels=int(current_app.config["MAX_IMAGE_PIXELS"]))
                except InvalidImage as exc:  # this file gets an error in its place; the others are still answered
                    errors[index] = exc
                    continue
                tensors.append(preprocess(bundle, image))
                decode_ms.append((time.perf_counter() - started) * 1000)
            if not tensors:
                raise none_usable(uploads, errors)
            futures = submit(batcher, tensors, top_k, announcement, explain)
        state().update_queue_depth()
        results = wait_all(futures, decode_started + float(current_app.config["REQUEST_TIMEOUT_S"]))
        count_answers(state().metrics, results)
        answered = iter(zip(results, decode_ms, tensors))
        predictions = []
        for index, upload in enumerate(uploads):  # upload order, a bad file's error object in its place
            if index in errors:
                predictions.append(image_error(upload, errors[index]))
                continue
            result, d, tensor = next(answered)
            prediction = result.prediction
            if result.cam is not None:  # the overlay is drawn here, in the request thread, not in the batcher's
                prediction = explain_prediction(bundle, prediction, tensor, result.cam)
            predictions.append({
                "filename": upload.filename,
                **prediction.to_dict(),
                "batch_size": result.batch_size,
                "timing_ms": {"decode": round(d, 2), "queue": round(result.queue_ms, 2),
                              "inference": round(result.inference_ms, 2)},
            })
        total_ms = (time.perf_counter() - g.started) * 1000
        return jsonify(predictions=predictions, model=bundle.describe(), timing_ms={"total": round(total_ms, 2)})

    @app.post("/feedback")
    def feedback() -> tuple[Response, int]:
        require_token()
        bundle, _ = state().require_ready()
        if request.mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
            raise ApiError(415, "unsupported_media_type", "send multipart/form-data with file, correct_class, ...")
        if "file" not in request.files:
            raise ApiError(400, "missing_file", 'no "file" part: attach the photo that was classified wrongly')
        upload = read_uploads(request, max_files=1)[0]
        decode_or_error(upload.data, upload.filename)  # only real images are stored
        correct = request.form.get("correct_class", "").strip()
        predicted = request.form.get("predicted_class", "").strip() or None
        comment = request.form.get("comment", "").strip()[:2000] or None
        allowed = [*bundle.class_names, NOT_A_TOMATO_LEAF]  # "the photo is not a tomato leaf" is a correction too
        for name, value in (("correct_class", correct), ("predicted_class", predicted)):
            if (value or name == "correct_class") and value not in allowed:
                raise ApiError(400, "bad_parameter", f"{name} must be one of {allowed}, got {value!r}")
        try:
            item_id = state().feedback.add(upload.data, predicted, correct, comment, bundle.sha256)
        except FeedbackStoreFull as exc:
            raise ApiError(507, "feedback_store_full", str(exc)) from None
        return jsonify(id=item_id, stored=True), 201


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> tuple[Response, int, dict[str, str]]:
        return jsonify(exc.to_dict()), exc.status_code, exc.headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int, dict[str, str]]:
        code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.code or 500, "http_error")
        message = exc.description or exc.name
        if exc.code == 413 and message == RequestEntityTooLarge.description:  # the body limit; others say theirs
            message = f"request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return jsonify({"error": {"code": code, "message": message}}), exc.code or 500, headers

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        app.logger.exception("unhandled error")
        return jsonify({"error": {"code": "internal_error", "message": "unexpected server error"}}), 500


def register_metrics_hooks(app: Flask) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics = state().metrics
        metrics.requests.labels(endpoint, request.method, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """App factory: defaults < TOMATO_* environment < `test_config`; loads and warms the model once."""
    app = Flask(__name__)
    app.request_class = ApiRequest  # multipart uploads parsed by python-multipart (serving/multipart.py)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env("TOMATO")
    app.config["API_TOKEN"] = token_from_environment()  # the raw string: no JSON parsing of secrets
    if test_config:
        app.config.from_mapping(test_config)
    app.config["API_TOKEN"] = validate_token(app.config["API_TOKEN"])  # refuses "", "0", "false", ...
    app.json.sort_keys = False
    service = ServiceState(app)
    app.extensions["tomato"] = service
    register_error_handlers(app)
    register_http_layer_errors(app)  # gunicorn's parser errors met while reading a body: 400
    register_metrics_hooks(app)
    register_routes(app)
    app.register_blueprint(kserve_v2.blueprint)  # the Open Inference Protocol (KServe v2) under /v2
    register_jobs(app)  # bulk jobs: /v1/jobs on the Redis job queue (jobs/api.py)
    if app.config["LOAD_IN_BACKGROUND"]:
        threading.Thread(target=service.load, name="model-loader", daemon=True).start()
    else:
        service.load()
    return app


def serve(argv: list[str] | None = None) -> None:
    """Start gunicorn with the settings in gunicorn.conf.py and this command line's options on top."""
    from gunicorn.app.base import BaseApplication

    parser = argparse.ArgumentParser(description="Serve the tomato-leaf classifier with gunicorn (gunicorn.conf.py).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--model", default=None, help="model bundle .pt (default: the shipped one)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--backend", default=None, choices=("auto", "eager", "onnxruntime"),
                        help="forward engine (default auto: ONNX Runtime on the CPU, eager PyTorch on CUDA)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes, each with its own model copy (~600 MiB) and batcher; 0 (default) = one per "
                             "CPU core up to 4, or 1 on a GPU. Forward threads per process default to cores / workers")
    parser.add_argument("--threads", type=int, default=None,
                        help="request threads per process (default 128); keep it above MAX_QUEUE + MAX_BATCH_SIZE so "
                             "that under overload requests reach the batcher's bounded queue (429) instead of "
                             "waiting unseen in gunicorn's own queue")
    parser.add_argument("--graceful-timeout", type=int, default=None,
                        help="seconds in-flight requests get on SIGTERM (default 20)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in {"MODEL_PATH": args.model, "BACKEND": args.backend}.items() if v}
    if args.device:  # gunicorn.conf.py sizes its default worker count by the device; every worker reads it too
        os.environ["TOMATO_DEVICE"] = args.device
    options = {"bind": [f"{args.host}:{args.port}"], "workers": args.workers or None, "threads": args.threads,
               "graceful_timeout": args.graceful_timeout}

    class GunicornServer(BaseApplication):
        def load_config(self) -> None:
            settings = runpy.run_path(str(GUNICORN_CONFIG))  # what gunicorn's own CLI does with a config file
            settings.update({k: v for k, v in options.items() if v is not None})
            for key, value in settings.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Flask:
            return create_app(overrides)  # in each worker, after the fork; on_starting has set its environment

    GunicornServer().run()


if __name__ == "__main__":
    serve()
