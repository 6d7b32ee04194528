"""OpenAPI paths of the Open Inference Protocol routes (serving/kserve_v2.py), as strict as the server.

JSON Schema cannot tie a tensor's `shape` to the length of its `data`, so the JSON request body is written as one
exact choice per image count (1..MAX_FILES): what the schema calls valid, the server answers with 200. The FP32
`input` tensor and the binary tensor data extension are described in words (a 3 x H x W float tensor is no
body for a fuzzer to draw).
"""
from __future__ import annotations

from typing import Any

V2_ERROR = {"$ref": "#/components/schemas/V2Error"}
OUTPUT_NAMES = ["probabilities", "class_name", "verdict", "leaf_score"]


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": V2_ERROR}}} for c in codes}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


def _infer_body(max_files: int) -> dict[str, Any]:
    image = {"type": "string", "format": "byte", "description": "an encoded image file (JPEG, PNG, ...) as base64"}
    choices = [{"type": "array", "items": {"type": "integer", "enum": [n]}, "minItems": 1, "maxItems": 1}
               for n in range(1, max_files + 1)]
    tensor = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": ["image"]},
            "datatype": {"type": "string", "enum": ["BYTES"]},
            "shape": {},
            "data": {},
            # in a JSON body every input carries its data: binary_data_size belongs to the binary extension
            "parameters": {"type": "object", "not": {"required": ["binary_data_size"]}},
        },
        "required": ["name", "datatype", "shape", "data"],
        "oneOf": [{"properties": {"shape": shape, "data": {"type": "array", "items": image, "minItems": n,
                                                            "maxItems": n}}}
                  for n, shape in enumerate(choices, start=1)],
    }
    output = {"type": "object",
              "properties": {"name": {"type": "string", "enum": OUTPUT_NAMES},
                             "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}},
              "required": ["name"]}
    return {"type": "object",
            "properties": {"id": {"type": "string"},
                           "parameters": {"type": "object",
                                          "properties": {"binary_data_output": {"type": "boolean"}}},
                           "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1},
                           "outputs": {"type": "array", "items": output}},
            "required": ["inputs"]}


def v2_components() -> dict[str, Any]:
    return {"V2Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}


def v2_paths(model_name: str | None, model_version: str | None, max_files: int) -> dict[str, Any]:
    """The /v2 paths; `model_name`/`model_version`: the loaded model's (None while it loads)."""
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", **({"enum": [model_name]} if model_name else {})}}
    version = {"name": "version", "in": "path", "required": True,
               "schema": {"type": "string", **({"enum": [model_version]} if model_version else {})}}
    tensor_meta = {"type": "object", "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                                    "shape": {"type": "array", "items": {"type": "integer"}}}}
    metadata = _ok("model metadata", {"type": "object", "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"}, "inputs": {"type": "array", "items": tensor_meta},
        "outputs": {"type": "array", "items": tensor_meta}}, "required": ["name", "platform", "inputs", "outputs"]})
    model_ready = _ok("the model is ready", {"type": "object", "properties": {
        "name": {"type": "string"}, "ready": {"type": "boolean"}}, "required": ["name", "ready"]})
    output = {"type": "object", "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                               "shape": {"type": "array", "items": {"type": "integer"}},
                                               "data": {"type": "array"}, "parameters": {"type": "object"}},
              "required": ["name", "datatype", "shape"]}
    infer = {"post": {
        "summary": "Open Inference Protocol inference: image files (BYTES) in; probabilities, class, verdict out",
        "description": 'The JSON body shown takes `image` (BYTES [N], base64 strings). The server also takes '
                       '`input` (FP32 [N, 3, H, W], preprocessed with the bundle\'s transform; H and W in GET '
                       '/v2/models/{name}) and the binary tensor data extension (header '
                       'Inference-Header-Content-Length), as tritonclient sends them.',
        "requestBody": {"required": True, "content": {"application/json": {"schema": _infer_body(max_files)}}},
        "security": [{}, {"bearer": []}, {"apiToken": []}],  # only when TOMATO_API_TOKEN is set
        "responses": {
            "200": {"description": "the outputs asked for (all four by default); binary when asked for",
                    "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"model_name": {"type": "string"},
                                                         "model_version": {"type": "string"},
                                                         "id": {"type": "string"},
                                                         "outputs": {"type": "array", "items": output}},
                        "required": ["model_name", "model_version", "outputs"]}},
                                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            **_errors(400, 401, 404, 413, 415, 429, 503, 504),
        },
    }}
    with_version = [name, version]
    return {
        "/v2/health/live": {"get": {"summary": "Open Inference Protocol: server live",
                                    "responses": _ok("live", {"type": "object", "properties": {
                                        "live": {"type": "boolean"}}, "required": ["live"]})}},
        "/v2/health/ready": {"get": {"summary": "Open Inference Protocol: every worker has its model warm (400: no)",
                                     "responses": {**_ok("ready", {"type": "object", "properties": {
                                         "ready": {"type": "boolean"}}, "required": ["ready"]}),
                                                   "400": {"description": "not ready", "content": {
                                                       "application/json": {"schema": {"type": "object"}}}}}}},
        "/v2": {"get": {"summary": "Open Inference Protocol: server metadata and extensions",
                        "responses": _ok("server metadata", {"type": "object", "properties": {
                            "name": {"type": "string"}, "version": {"type": "string"},
                            "extensions": {"type": "array", "items": {"type": "string"}}},
                                                           "required": ["name", "version", "extensions"]})}},
        "/v2/models/{name}": {"get": {"summary": "Model metadata", "parameters": [name],
                                      "responses": {**metadata, **_errors(404, 503)}}},
        "/v2/models/{name}/versions/{version}": {"get": {"summary": "Model metadata", "parameters": with_version,
                                                         "responses": {**metadata, **_errors(404, 503)}}},
        "/v2/models/{name}/ready": {"get": {"summary": "Model readiness", "parameters": [name],
                                            "responses": {**model_ready, **_errors(404, 503)}}},
        "/v2/models/{name}/versions/{version}/ready": {"get": {"summary": "Model readiness",
                                                               "parameters": with_version,
                                                               "responses": {**model_ready, **_errors(404, 503)}}},
        "/v2/models/{name}/infer": {"post": {**infer["post"], "parameters": [name]}},
        "/v2/models/{name}/versions/{version}/infer": {"post": {**infer["post"], "parameters": with_version}},
    }
