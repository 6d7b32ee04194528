"""The Open Inference Protocol (KServe v2, as Triton, KServe and MLServer speak it), beside /predict.

Clients written for those servers (tritonclient, KServe's SDK, plain JSON) can use this model unchanged:
`image` (BYTES: encoded image files, base64 strings in JSON) or `input` (FP32 [N, 3, H, W], already preprocessed
with the bundle's transform) in; `probabilities` FP32 [N, C], `class_name`, `verdict` (BYTES [N]) and `leaf_score`
(FP32 [N]) out. It runs on the same worker state as /predict: the same batcher, request limits, API token and
metrics. Errors are the protocol's `{"error": "..."}` with a 4xx (or 503/504) status. Tensor (de)coding, JSON and
the binary tensor data extension, lives in serving/v2_codec.py.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from inference import ModelBundle, preprocess
from serving.auth import require_token
from serving.errors import ApiError
from serving.scoring import count_answers, decode_or_error, submit, wait_all
from serving.v2_codec import HEADER_LENGTH, InferRequest, OutputTensor, bad_request, encode_response, \
    parse_infer_request

SERVER_NAME = "tomato-leaf-classifier"
PROTOCOL_VERSION = "2"
EXTENSIONS = ["binary_tensor_data"]
OUTPUT_NAMES = ("probabilities", "class_name", "verdict", "leaf_score")

blueprint = Blueprint("kserve_v2", __name__, url_prefix="/v2")


@blueprint.errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[Response, int, dict[str, str]]:
    return jsonify(error=exc.message), exc.status_code, exc.headers


@blueprint.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[Response, int]:
    message = exc.description or exc.name
    if exc.code == 413 and message == RequestEntityTooLarge.description:
        message = f"request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    return jsonify(error=message), exc.code or 500


def _service() -> Any:
    return current_app.extensions["tomato"]


def _all_ready() -> bool:
    service = _service()
    if not service.ready.is_set() or service.bundle is None:
        return False
    warm, expected = service.workers_ready()
    return warm >= expected


def _model(name: str, version: str | None, bundle: ModelBundle | None = None) -> ModelBundle:
    """The loaded bundle when `name` (and `version`, if given) are the one this server serves, else 404."""
    bundle = bundle or _service().require_ready()[0]
    if name != bundle.name or (version is not None and version != bundle.version):
        wanted = f"{name!r}" + (f" version {version!r}" if version is not None else "")
        raise ApiError(404, "not_found", f"model {wanted} is not served here; this server serves "
                                         f"{bundle.name!r} version {bundle.version!r}")
    return bundle


def _tensor_metadata(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}


@blueprint.get("/health/live")
def live() -> Response:
    return jsonify(live=True)


@blueprint.get("/health/ready")
def ready() -> tuple[Response, int]:
    """200 when every worker has its model warm; the protocol's 4xx (400) for "not ready"."""
    is_ready = _all_ready()
    return jsonify(ready=is_ready), 200 if is_ready else 400


@blueprint.get("")
def server_metadata() -> Response:
    return jsonify(name=SERVER_NAME, version=PROTOCOL_VERSION, extensions=EXTENSIONS)


@blueprint.get("/models/<name>")
@blueprint.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    bundle = _model(name, version)
    side, classes = bundle.preprocess.image_size, len(bundle.class_names)
    return jsonify(
        name=bundle.name, versions=[bundle.version],
        platform="onnxruntime_onnx" if bundle.engine.name == "onnxruntime" else "pytorch_libtorch",
        inputs=[_tensor_metadata("image", "BYTES", [-1]), _tensor_metadata("input", "FP32", [-1, 3, side, side])],
        outputs=[_tensor_metadata("probabilities", "FP32", [-1, classes]), _tensor_metadata("class_name", "BYTES", [-1]),
                 _tensor_metadata("verdict", "BYTES", [-1]), _tensor_metadata("leaf_score", "FP32", [-1])],
        parameters={"class_names": bundle.class_names, "sha256": bundle.sha256},
    )


@blueprint.get("/models/<name>/ready")
@blueprint.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> tuple[Response, int]:
    bundle = _model(name, version)
    return jsonify(name=bundle.name, ready=True), 200


def _images_to_tensors(bundle: ModelBundle, files: list[bytes]) -> list[torch.Tensor]:
    return [preprocess(bundle, decode_or_error(data, f"image[{index}]")) for index, data in enumerate(files)]


def _input_tensors(bundle: ModelBundle, infer: InferRequest, max_images: int) -> tuple[str, list[Any]]:
    """(input name, per-image work): image files to decode, or ready float tensors; shapes and counts checked."""
    if len(infer.inputs) != 1:
        raise bad_request('send exactly one input: "image" (BYTES) or "input" (FP32 [N, 3, H, W])')
    tensor = infer.inputs[0]
    side = bundle.preprocess.image_size
    if tensor.name == "image":
        if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
            raise bad_request('input "image" must be BYTES with shape [N]')
        items: list[Any] = list(tensor.values)
    elif tensor.name == "input":
        if tensor.datatype != "FP32" or len(tensor.shape) != 4 or tensor.shape[1:] != [3, side, side]:
            raise bad_request(f'input "input" must be FP32 with shape [N, 3, {side}, {side}]')
        array = np.asarray(tensor.values)
        if not np.isfinite(array).all():
            raise bad_request('input "input" holds NaN or infinite values')
        items = list(torch.from_numpy(array.copy()))
    else:
        raise bad_request(f'unknown input {tensor.name!r}: this model takes "image" or "input"')
    if not 1 <= len(items) <= max_images:
        raise bad_request(f"{len(items)} images sent; between 1 and {max_images} per request")
    return tensor.name, items


def _outputs(bundle: ModelBundle, infer: InferRequest, results: list[Any]) -> list[OutputTensor]:
    wanted = [o["name"] for o in infer.requested] if infer.requested else list(OUTPUT_NAMES)
    unknown = [name for name in wanted if name not in OUTPUT_NAMES]
    if unknown:
        raise bad_request(f"unknown outputs {unknown}; this model gives {list(OUTPUT_NAMES)}")
    predictions = [r.prediction for r in results]
    count = len(predictions)
    every = {
        "probabilities": OutputTensor("probabilities", "FP32", [count, len(bundle.class_names)], np.array(
            [[p.probabilities[c] for c in bundle.class_names] for p in predictions], dtype=np.float32)),
        "class_name": OutputTensor("class_name", "BYTES", [count], [p.class_name for p in predictions]),
        "verdict": OutputTensor("verdict", "BYTES", [count], [p.verdict for p in predictions]),
        "leaf_score": OutputTensor("leaf_score", "FP32", [count],
                                   np.array([p.leaf_score for p in predictions], dtype=np.float32)),
    }
    return [every[name] for name in wanted]


@blueprint.post("/models/<name>/infer")
@blueprint.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    require_token()
    service = _service()
    bundle, batcher = service.require_ready()  # one consistent pair, even while a model swap lands
    _model(name, version, bundle)
    max_images = int(current_app.config["MAX_FILES"])
    side = bundle.preprocess.image_size
    infer_request = parse_infer_request(request.get_data(cache=False), request.headers.get(HEADER_LENGTH),
                                        max_elements=max_images * 3 * side * side)
    kind, items = _input_tensors(bundle, infer_request, max_images)
    if infer_request.requested:  # refuse unknown outputs before any model work
        _outputs(bundle, infer_request, [])
    started = time.perf_counter()
    with batcher.incoming(len(items)) as announcement:
        tensors = _images_to_tensors(bundle, items) if kind == "image" else items
        futures = submit(batcher, tensors, 1, announcement)
    service.update_queue_depth()
    results = wait_all(futures, started + float(current_app.config["REQUEST_TIMEOUT_S"]))
    count_answers(service.metrics, results)
    header: dict[str, Any] = {"model_name": bundle.name, "model_version": bundle.version}
    if infer_request.id is not None:
        header["id"] = infer_request.id
    body, headers = encode_response(header, _outputs(bundle, infer_request, results), infer_request)
    return Response(body, 200, headers)
