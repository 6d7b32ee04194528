"""OpenAPI 3 description of the API, as strict as the server: what the spec calls valid, the server accepts.

Tests check it lists exactly the routes the app serves, and schemathesis (tests/test_openapi_fuzz.py) sends it
schema-valid and schema-invalid requests against a live server. The limits that depend on the model or the
configuration (class names, top_k's maximum, images per request) come from the running server.
"""
from __future__ import annotations

from typing import Any

from jobs.openapi import job_paths
from model.verdict import NOT_A_TOMATO_LEAF, REASONS, VERDICTS
from serving.openapi_v2 import v2_components, v2_paths

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": ERROR}}} for c in codes}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def openapi_spec(class_names: list[str] | None = None, max_files: int = 16,
                 model: tuple[str, str] | None = None) -> dict[str, Any]:
    """`class_names`: the loaded model's classes (None while it loads: the class fields are then plain strings);
    `model`: its (name, version), the only values the /v2 model paths take."""
    score = {
        "type": "object",
        "properties": {"class_name": {"type": "string"}, "display_name": {"type": "string"},
                       "probability": {"type": "number"}},
        "required": ["class_name", "display_name", "probability"],
    }
    prediction = {
        "type": "object",
        "properties": {
            "filename": {"type": "string"},
            "class_name": {"type": "string"},
            "display_name": {"type": "string"},
            "probability": {"type": "number", "description": "calibrated probability of the top class"},
            "top_k": {"type": "array", "items": {"$ref": "#/components/schemas/ClassScore"}},
            "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            "verdict": {"type": "string", "enum": list(VERDICTS),
                        "description": "act on class_name only when 'diagnosed'; 'uncertain': a poor photo or a close "
                                       "call (see verdict_reason); 'not_tomato_leaf': the photo does not look like a "
                                       "tomato leaf. Thresholds come from the model bundle (GET /v1/model)"},
            "leaf_score": {"type": "number", "minimum": 0, "maximum": 1,
                           "description": "how much the image looks like the tomato-leaf photos the model knows"},
            "verdict_reason": {"type": "string", "nullable": True, "enum": [*REASONS, None],
                               "description": "the check that stopped a diagnosis; null when diagnosed"},
            "batch_size": {"type": "integer", "description": "images in the model forward that included this one"},
            "timing_ms": {"type": "object", "properties": {k: {"type": "number"} for k in ("decode", "queue", "inference")}},
        },
        "required": ["class_name", "display_name", "probability", "top_k", "probabilities", "verdict", "leaf_score",
                     "verdict_reason", "timing_ms"],
    }
    # Every image is a non-empty string of bytes; whether they decode is the server's answer (400/413/415).
    image_bytes = {"type": "string", "format": "binary", "minLength": 1}
    image_b64 = {"type": "string", "format": "byte", "minLength": 4, "description": "base64, or a data: URL"}
    # a correction may also say the photo is not a tomato leaf at all
    corrections = [*class_names, NOT_A_TOMATO_LEAF] if class_names else None
    class_name: dict[str, Any] = {"type": "string", "enum": corrections} if corrections else {"type": "string"}
    optional_class = ({"type": "string", "enum": [*corrections, ""], "description": "empty = not given"}
                      if corrections else {"type": "string"})
    predict_body = {
        "multipart/form-data": {
            "schema": {"type": "object",
                       "properties": {"file": {"type": "array", "minItems": 1, "maxItems": max_files,
                                               # per-image results: an empty or unreadable file among others gets
                                               # an error object in its place, so no length limit per item
                                               "items": {"type": "string", "format": "binary"}}},
                       "required": ["file"]},
        },
        "image/*": {"schema": image_bytes},
        "application/json": {
            "schema": {
                "type": "object",
                "description": 'one image, or a list of them; with both keys, "image" is used and "images" ignored',
                "anyOf": [
                    {"properties": {"image": image_b64}, "required": ["image"]},
                    {"properties": {"images": {"type": "array", "items": image_b64, "minItems": 1,
                                               "maxItems": max_files}},
                     "required": ["images"], "not": {"required": ["image"]}},
                ],
            },
        },
    }
    feedback_body = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": image_bytes, "correct_class": class_name, "predicted_class": optional_class,
                               # no type: a form field is text whatever it looks like ("true", "{}"), and any is kept
                               "comment": {"description": "free text, kept up to 2,000 characters"}},
                "required": ["file", "correct_class"],
            }
        }
    }
    top_k = {"type": "integer", "minimum": 1, **({"maximum": len(class_names)} if class_names else {})}
    return {
        "openapi": "3.0.3",
        "info": {"title": "Tomato-leaf disease classifier", "version": "1.0.0",
                 "description": "Upload a photo of a tomato leaf; get the disease (or healthy) with calibrated probabilities."},
        "components": {
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}, "required": ["code", "message"]}},
                          "required": ["error"]},
                "ClassScore": score,
                "Prediction": prediction,
                "ImageError": {  # a file of a multi-image request that could not be used; the others are answered
                    "type": "object",
                    "properties": {"filename": {"type": "string"}, "error": {"type": "object", "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}}, "required": ["code", "message"]}},
                    "required": ["filename", "error"],
                },
                **v2_components(),
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiToken": {"type": "apiKey", "in": "header", "name": "X-API-Token"}},
        },
        "paths": {
            "/": {"get": {"summary": "Usage message", "responses": {"200": _json("usage")}}},
            "/livez": {"get": {"summary": "Process is alive", "responses": {"200": _json("alive")}}},
            "/readyz": {"get": {"summary": "Model loaded and warmed up in every worker process", "responses": {"200": _json("ready"), **_errors(503)}}},
            "/v1/model": {"get": {"summary": "Model name, classes, input size and test metrics",
                                  "responses": {"200": _json("model"), **_errors(503)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json("OpenAPI 3 document")}}},
            "/predict": {"post": {
                "summary": "Classify one or several leaf photos (one batched forward)",
                "parameters": [{"name": "top_k", "in": "query", "schema": top_k},
                               {"name": "explain", "in": "query", "schema": {"type": "boolean"},
                                "description": "true: each prediction gets an `explanation` (class-activation map "
                                               "grid, its shape and a PNG overlay as base64)"}],
                "requestBody": {"required": True, "content": predict_body},
                "security": [{}, {"bearer": []}, {"apiToken": []}],  # only when TOMATO_API_TOKEN is set
                "responses": {
                    "200": _json("one entry per image, in upload order: a Prediction, or an ImageError for a file that "
                                 "could not be used (200 when at least one image was answered; when none could be, "
                                 "the first bad file's 4xx error)", {
                        "type": "object",
                        "properties": {"predictions": {"type": "array", "items": {"oneOf": [
                            {"$ref": "#/components/schemas/Prediction"},
                            {"$ref": "#/components/schemas/ImageError"}]}},
                                       "model": {"type": "object"}, "timing_ms": {"type": "object"}},
                        "required": ["predictions", "model", "timing_ms"]}),
                    **_errors(400, 401, 413, 415, 429, 503, 504),
                },
            }},
            "/feedback": {"post": {
                "summary": "Report a wrong prediction (stored with the image)",
                "requestBody": {"required": True, "content": feedback_body},
                "security": [{}, {"bearer": []}, {"apiToken": []}],  # only when TOMATO_API_TOKEN is set
                "responses": {"201": _json("stored", {"type": "object", "properties": {"id": {"type": "string"},
                                                                                    "stored": {"type": "boolean"}}}),
                              **_errors(400, 401, 413, 415, 503, 507)},
            }},
            **v2_paths(*(model or (None, None)), max_files),
            **job_paths(top_k),  # bulk jobs (jobs/api.py)
        },
    }
