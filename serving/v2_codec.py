"""Tensors of the Open Inference Protocol (KServe v2) over HTTP: JSON and the binary tensor data extension.

A request body is JSON, or (binary extension) a JSON header of `Inference-Header-Content-Length` bytes followed by
the raw tensors in input order, each input saying its size in `parameters.binary_data_size`. Raw FP32 is
little-endian float32; raw BYTES is each element as a 4-byte little-endian length and its bytes. In JSON, a BYTES
element is a string: here, an encoded image file as base64 (the OpenVINO Model Server convention). Responses use the
same layout: an output goes binary when the request asks (`outputs[i].parameters.binary_data` or the request's
`parameters.binary_data_output`), which is what tritonclient does by default. Every refusal is an `ApiError`.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.errors import ApiError

HEADER_LENGTH = "Inference-Header-Content-Length"
NUMPY_TYPES = {"FP32": np.dtype("<f4")}  # the numeric datatypes this model takes or gives


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]  # FP32: array in `shape`; BYTES: the elements, flattened


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    requested: list[dict[str, Any]] | None  # the request's `outputs` (None: every output)
    binary_output: bool  # the request's parameters.binary_data_output
    parameters: dict[str, Any] = field(default_factory=dict)


def _flag(parameters: object, key: str) -> bool:
    """True when `parameters` is an object whose `key`, if present, is a boolean."""
    return isinstance(parameters, dict) and isinstance(parameters.get(key, False), bool)


def _shape(raw: object, name: str) -> list[int]:
    if not isinstance(raw, list) or not raw or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                         for d in raw):
        raise bad_request(f"input {name!r}: shape must be a non-empty list of non-negative integers")
    return raw


def _row_major(data: object, shape: list[int], name: str) -> list[Any]:
    """The elements of `data`, given flat or nested exactly as `shape` (the protocol's two JSON layouts)."""
    if isinstance(data, list) and not any(isinstance(v, list) for v in data):
        if len(data) != math.prod(shape):
            raise bad_request(f"input {name!r}: {len(data)} elements for shape {shape}")
        return data
    flat: list[Any] = []

    def walk(node: object, depth: int) -> None:
        if depth == len(shape):
            if isinstance(node, list):
                raise bad_request(f"input {name!r}: data is nested deeper than shape {shape}")
            flat.append(node)
            return
        if not isinstance(node, list) or len(node) != shape[depth]:
            raise bad_request(f"input {name!r}: data is neither flat nor nested as shape {shape}")
        for child in node:
            walk(child, depth + 1)

    walk(data, 0)
    return flat


def _json_bytes(data: object, shape: list[int], name: str) -> list[bytes]:
    """BYTES in JSON: base64 strings, flat or nested as the shape."""
    out = []
    for element in _row_major(data, shape, name):
        if not isinstance(element, str):
            raise bad_request(f"input {name!r}: BYTES elements must be base64 strings in JSON")
        try:
            out.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError):
            raise bad_request(f"input {name!r}: an element is not valid base64") from None
    return out


def _json_numbers(data: object, shape: list[int], dtype: np.dtype, name: str) -> np.ndarray:
    flat = _row_major(data, shape, name)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise bad_request(f"input {name!r}: FP32 data must be numbers")
    return np.asarray(flat, dtype=dtype).reshape(shape)


def _raw_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    out, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise bad_request(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise bad_request(f"input {name!r}: BYTES element longer than its data")
        out.append(raw[offset:offset + length])
        offset += length
    if len(out) != count:
        raise bad_request(f"input {name!r}: {len(out)} elements for shape of {count}")
    return out


def _raw_numbers(raw: bytes, shape: list[int], dtype: np.dtype, name: str) -> np.ndarray:
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise bad_request(f"input {name!r}: {len(raw)} bytes of binary data for shape {shape}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def parse_infer_request(body: bytes, header_length: str | None, max_elements: int) -> InferRequest:
    """The request's JSON and its inputs; `max_elements` bounds each input's element count before any allocation."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise bad_request(f"{HEADER_LENGTH} must be an integer") from None
        if not 0 < split <= len(body):
            raise bad_request(f"{HEADER_LENGTH} {split} does not fit a body of {len(body)} bytes")
        header, binary = body[:split], body[split:]
    else:
        header, binary = body, b""
    try:
        document = json.loads(header)
    except (ValueError, RecursionError):
        raise bad_request("the request is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or not document["inputs"]:
        raise bad_request('the request needs a non-empty "inputs" list')
    parameters = document.get("parameters", {})
    requested = document.get("outputs")
    if not isinstance(parameters, dict) or (requested is not None and not (
            isinstance(requested, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                and _flag(o.get("parameters", {}), "binary_data")
                                                for o in requested))):
        raise bad_request('"parameters" must be an object and "outputs" a list of {"name": ...} objects '
                          '(with parameters.binary_data true or false)')
    if not _flag(parameters, "binary_data_output"):
        raise bad_request('parameters.binary_data_output must be true or false')
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request('"id" must be a string')
    inputs, offset = [], 0
    for spec in document["inputs"]:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(
                spec.get("datatype"), str):
            raise bad_request('each input needs "name", "shape" and "datatype"')
        name, datatype = spec["name"], spec["datatype"]
        shape = _shape(spec.get("shape"), name)
        if math.prod(shape) > max_elements:
            raise bad_request(f"input {name!r}: shape {shape} is larger than this server takes")
        input_parameters = spec.get("parameters", {})
        if not isinstance(input_parameters, dict):
            raise bad_request(f"input {name!r}: parameters must be an object")
        size = input_parameters.get("binary_data_size")
        if datatype != "BYTES" and datatype not in NUMPY_TYPES:
            raise bad_request(f"input {name!r}: datatype {datatype!r} is not supported here")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise bad_request(f"input {name!r}: binary_data_size does not match the binary data sent")
            raw = binary[offset:offset + size]
            offset += size
            values = (_raw_bytes(raw, math.prod(shape), name) if datatype == "BYTES"
                      else _raw_numbers(raw, shape, NUMPY_TYPES[datatype], name))
        else:
            if "data" not in spec:
                raise bad_request(f"input {name!r} has neither data nor binary_data_size")
            values = (_json_bytes(spec["data"], shape, name) if datatype == "BYTES"
                      else _json_numbers(spec["data"], shape, NUMPY_TYPES[datatype], name))
        inputs.append(InputTensor(name, datatype, shape, values))
    if offset != len(binary):
        raise bad_request(f"{len(binary) - offset} bytes of binary data belong to no input")
    return InferRequest(request_id, inputs, requested, bool(parameters.get("binary_data_output", False)), parameters)


@dataclass
class OutputTensor:
    name: str
    datatype: str  # "FP32" or "BYTES"
    shape: list[int]
    values: np.ndarray | list[str]


def wants_binary(request: InferRequest, name: str) -> bool:
    """Binary when this output asks for it, else as the request's binary_data_output says."""
    for spec in request.requested or []:
        if spec["name"] == name and isinstance(spec.get("parameters"), dict) and "binary_data" in spec["parameters"]:
            return bool(spec["parameters"]["binary_data"])
    return request.binary_output


def encode_response(header: dict[str, Any], outputs: list[OutputTensor],
                    request: InferRequest) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers): JSON only, or JSON header + binary outputs when any output goes binary."""
    entries, chunks = [], []
    for tensor in outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if wants_binary(request, tensor.name):
            if tensor.datatype == "BYTES":
                raw = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in tensor.values)
            else:
                raw = np.ascontiguousarray(tensor.values, dtype=NUMPY_TYPES[tensor.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            values = tensor.values
            entry["data"] = values.reshape(-1).tolist() if isinstance(values, np.ndarray) else list(values)
        entries.append(entry)
    document = json.dumps({**header, "outputs": entries}).encode()
    if not chunks:
        return document, {"Content-Type": "application/json"}
    return document + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                         HEADER_LENGTH: str(len(document))}
