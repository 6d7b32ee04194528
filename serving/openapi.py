"""OpenAPI 3 description of the API; tests check it lists exactly the routes the app serves."""
from __future__ import annotations

from typing import Any

from model.verdict import REASONS, VERDICTS

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": ERROR}}} for c in codes}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def openapi_spec() -> dict[str, Any]:
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
    predict_body = {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                       "required": ["file"]},
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {
            "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "byte"},
                                                        "images": {"type": "array", "items": {"type": "string", "format": "byte"}}}},
        },
    }
    feedback_body = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}, "correct_class": {"type": "string"},
                               "predicted_class": {"type": "string"}, "comment": {"type": "string"}},
                "required": ["file", "correct_class"],
            }
        }
    }
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
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
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
                "parameters": [{"name": "top_k", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
                "requestBody": {"required": True, "content": predict_body},
                "security": [{}, {"bearer": []}],
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
                "security": [{}, {"bearer": []}],
                "responses": {"201": _json("stored", {"type": "object", "properties": {"id": {"type": "string"},
                                                                                    "stored": {"type": "boolean"}}}),
                              **_errors(400, 401, 413, 415, 503, 507)},
            }},
        },
    }
