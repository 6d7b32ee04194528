"""The job routes' part of the OpenAPI document (serving/openapi.py merges it into the paths)."""
from __future__ import annotations

from typing import Any

from model.verdict import VERDICTS

ERROR = {"$ref": "#/components/schemas/Error"}
JOB_ID = {"name": "job_id", "in": "path", "required": True,
          "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
SECURITY = [{}, {"bearer": []}, {"apiToken": []}]  # only when TOMATO_API_TOKEN is set


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", "content": {"application/json": {"schema": ERROR}}} for c in codes}


def job_paths(top_k: dict[str, Any]) -> dict[str, Any]:
    """/v1/jobs and /v1/jobs/{job_id}; `top_k` is the /predict parameter's schema (its maximum is the model's)."""
    # "archive" is a custom format: a zip or tar of images (tests/schemathesis_hooks.py draws real ones)
    archive = {"type": "string", "format": "archive"}
    submit_body = {
        "multipart/form-data": {"schema": {
            "type": "object",
            "description": 'many "file" parts, one image each (the server also takes one "archive" file part '
                           "holding a zip or tar instead)",
            # no maxItems: the per-job limit (JOBS_MAX_IMAGES, 10,000) is answered with 413, and a schema bound
            # that high has schemathesis's coverage phase send 10,000 photos in one request
            "properties": {"file": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}},
            "required": ["file"],
        }},
        "application/zip": {"schema": archive},
        "application/x-tar": {"schema": archive},
    }
    result = {"type": "object", "description": "a Prediction (status ok) or an error, with index and file",
              "properties": {"index": {"type": "integer"}, "file": {"type": "string"},
                             "status": {"type": "string", "enum": ["ok", "error"]},
                             "verdict": {"type": "string", "enum": list(VERDICTS)},
                             "error": {"type": "object"}},
              "required": ["index", "file", "status"]}
    job = {
        "type": "object",
        "properties": {
            "job_id": {"type": "string"},
            "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
            "progress": {"type": "object", "properties": {
                "done": {"type": "integer"}, "total": {"type": "integer"}, "percent": {"type": "number"},
                "images_per_s": {"type": "number"}, "eta_s": {"type": "number", "nullable": True},
                "elapsed_s": {"type": "number"}}, "required": ["done", "total", "images_per_s", "eta_s"]},
            "error": {"type": "string", "nullable": True},
            "results": {"type": "array", "items": result, "description": "present when state is done"},
        },
        "required": ["job_id", "state", "progress"],
    }
    return {
        "/v1/jobs": {"post": {
            "summary": "Queue a bulk job: many images, or one zip/tar archive, scored by the model workers",
            "parameters": [{"name": "top_k", "in": "query", "schema": top_k}],
            "requestBody": {"required": True, "content": submit_body},
            "security": SECURITY,
            "responses": {
                "202": {"description": "queued", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["job_id", "status_url", "total"],
                    "properties": {"job_id": {"type": "string"}, "status_url": {"type": "string"},
                                   "total": {"type": "integer"}, "state": {"type": "string"}}}}}},
                **_errors(400, 401, 413, 415, 429, 503),
            },
        }},
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "A job's state and progress; its results once done (JSON, or one CSV row per image)",
                "parameters": [JOB_ID, {"name": "format", "in": "query",
                                        "schema": {"type": "string", "enum": ["json", "csv"]}}],
                "security": SECURITY,
                "responses": {"200": {"description": "the job", "content": {
                    "application/json": {"schema": job},
                    "text/csv": {"schema": {"type": "string"}}}}, **_errors(400, 401, 404, 409, 503)},
            },
            "delete": {
                "summary": "Cancel a queued or running job",
                "parameters": [JOB_ID],
                "security": SECURITY,
                "responses": {"200": {"description": "cancelled", "content": {"application/json": {"schema": job}}},
                              **_errors(401, 404, 409, 503)},
            },
        },
    }
