"""The Open Inference Protocol (KServe v2) routes: the protocol's JSON in-process on the tiny model, and the real
`tritonclient[http]` client, unmodified, against a live server on the shipped model (JSON and binary tensors)."""
from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import requests
from support import CLASS_NAMES, class_of, sample_files

from inference import decode_image, load_bundle, preprocess

TINY = "tiny-test-model"


def infer_body(inputs: list[dict], **extra) -> dict:
    return {"inputs": inputs, **extra}


def image_input(files: list[bytes]) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [len(files)],
            "data": [base64.b64encode(f).decode() for f in files]}


def test_health_and_metadata(client):
    assert client.get("/v2/health/live").get_json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.get_json() == {"ready": True}
    assert client.get("/v2").get_json()["extensions"] == ["binary_tensor_data"]
    meta = client.get(f"/v2/models/{TINY}").get_json()
    assert meta["name"] == TINY and meta["versions"] == ["0.0.0-dev"]
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "image": ("BYTES", [-1]), "input": ("FP32", [-1, 3, 64, 64])}
    assert {o["name"]: o["shape"] for o in meta["outputs"]}["probabilities"] == [-1, len(CLASS_NAMES)]
    assert client.get(f"/v2/models/{TINY}/versions/0.0.0-dev/ready").get_json() == {"name": TINY, "ready": True}


def test_infer_with_images_matches_predict(client, leaf_bytes):
    files = [p.read_bytes() for p in sample_files()[:3]]
    answer = client.post(f"/v2/models/{TINY}/infer", json=infer_body([image_input(files)], id="r1"))
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["model_name"], body["model_version"], body["id"]) == (TINY, "0.0.0-dev", "r1")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert set(outputs) == {"probabilities", "class_name", "verdict", "leaf_score"}
    assert outputs["probabilities"]["shape"] == [3, len(CLASS_NAMES)]
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(3, -1)
    assert np.allclose(probabilities.sum(1), 1, atol=1e-4)
    predicted = client.post("/predict", data={"file": [(__import__("io").BytesIO(f), f"{i}.jpg")
                                                      for i, f in enumerate(files)]}).get_json()["predictions"]
    assert outputs["class_name"]["data"] == [p["class_name"] for p in predicted]
    assert outputs["verdict"]["data"] == [p["verdict"] for p in predicted]
    for row, p in zip(probabilities, predicted):
        assert np.allclose(row, [p["probabilities"][c] for c in CLASS_NAMES], atol=1e-5)


def test_infer_with_preprocessed_tensor_and_selected_output(client, tiny_bundle_path, leaf_bytes):
    bundle = load_bundle(tiny_bundle_path, device="cpu", backend="eager")
    tensor = preprocess(bundle, decode_image(leaf_bytes)).numpy()[None]
    body = infer_body([{"name": "input", "datatype": "FP32", "shape": list(tensor.shape),
                        "data": tensor.reshape(-1).tolist()}], outputs=[{"name": "class_name"}])
    answer = client.post(f"/v2/models/{TINY}/versions/0.0.0-dev/infer", json=body)
    assert answer.status_code == 200, answer.get_json()
    outputs = answer.get_json()["outputs"]
    from_image = client.post(f"/v2/models/{TINY}/infer", json=infer_body([image_input([leaf_bytes])])).get_json()
    assert [o["name"] for o in outputs] == ["class_name"]
    assert outputs[0]["data"] == [o for o in from_image["outputs"] if o["name"] == "class_name"][0]["data"]


def test_binary_tensor_extension_by_hand(client, leaf_bytes):
    """The extension's layout, written without any client library: JSON header, then length-prefixed BYTES."""
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": 4 + len(leaf_bytes)}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                                     {"name": "class_name"}]}).encode()
    raw = header + struct.pack("<I", len(leaf_bytes)) + leaf_bytes
    answer = client.post(f"/v2/models/{TINY}/infer", data=raw, headers={"Inference-Header-Content-Length": str(len(header))})
    assert answer.status_code == 200, answer.data[:300]
    split = int(answer.headers["Inference-Header-Content-Length"])
    document = json.loads(answer.data[:split])
    probabilities, class_name = document["outputs"]
    assert probabilities["parameters"]["binary_data_size"] == 4 * len(CLASS_NAMES) and "data" not in probabilities
    values = np.frombuffer(answer.data[split:], dtype="<f4")
    assert values.shape == (len(CLASS_NAMES),) and abs(values.sum() - 1) < 1e-4
    assert class_name["data"][0] == CLASS_NAMES[int(values.argmax())]


@pytest.mark.parametrize("path, body, status, words", [
    (f"/v2/models/other/infer", {"inputs": []}, 404, "not served here"),
    (f"/v2/models/{TINY}/versions/9.9/infer", {"inputs": []}, 404, "not served here"),
    (f"/v2/models/{TINY}/infer", {"inputs": []}, 400, "inputs"),
    (f"/v2/models/{TINY}/infer", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%"]}]},
     400, "base64"),
    (f"/v2/models/{TINY}/infer", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["QUJD"]}]},
     400, "elements"),
    (f"/v2/models/{TINY}/infer", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 8, 8],
                                              "data": [0.0] * 192}]}, 400, "shape [N, 3, 64, 64]"),
    (f"/v2/models/{TINY}/infer", {"inputs": [{"name": "input", "datatype": "INT8", "shape": [1], "data": [1]}]},
     400, "datatype"),
    (f"/v2/models/{TINY}/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]},
     400, "unknown input"),
    (f"/v2/models/{TINY}/infer", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                              "data": [base64.b64encode(b"not an image").decode()]}]}, 415, "image[0]"),
    (f"/v2/models/{TINY}/infer", {"inputs": [{"name": "input", "datatype": "FP32", "shape": [10 ** 9, 3, 64, 64],
                                              "data": []}]}, 400, "larger"),
    (f"/v2/models/other", None, 404, "not served here"),
])
def test_errors_are_the_protocols_json(client, path, body, status, words):
    answer = client.post(path, json=body) if body is not None else client.get(path)
    assert answer.status_code == status
    error = answer.get_json()["error"]
    assert isinstance(error, str) and words in error


def test_unknown_output_and_too_many_images(make_app, leaf_bytes):
    client = make_app(MAX_FILES=2).test_client()
    unknown = client.post(f"/v2/models/{TINY}/infer",
                          json=infer_body([image_input([leaf_bytes])], outputs=[{"name": "logits"}]))
    assert unknown.status_code == 400 and "logits" in unknown.get_json()["error"]
    many = client.post(f"/v2/models/{TINY}/infer", json=infer_body([image_input([leaf_bytes] * 3)]))
    assert many.status_code == 400 and "between 1 and 2" in many.get_json()["error"]


def test_token_guards_infer_but_not_metadata(make_app, leaf_bytes):
    client = make_app(API_TOKEN="s3cret-token-for-tests").test_client()
    body = infer_body([image_input([leaf_bytes])])
    refused = client.post(f"/v2/models/{TINY}/infer", json=body)
    assert refused.status_code == 401 and isinstance(refused.get_json()["error"], str)
    assert client.post(f"/v2/models/{TINY}/infer", json=body,
                       headers={"Authorization": "Bearer s3cret-token-for-tests"}).status_code == 200
    assert client.get(f"/v2/models/{TINY}").status_code == 200


def test_v2_requests_are_in_the_metrics(client, leaf_bytes):
    client.post(f"/v2/models/{TINY}/infer", json=infer_body([image_input([leaf_bytes])]))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'endpoint="/v2/models/<name>/infer"' in text


# ---- the real client against a real server on the shipped model ----

@pytest.fixture(scope="module")
def triton(shipped_server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(shipped_server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def model_name(shipped_server) -> str:
    return requests.get(f"{shipped_server.url}/v1/model", timeout=30).json()["name"]


def test_tritonclient_health_and_metadata(triton, model_name):
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(model_name)
    assert "binary_tensor_data" in triton.get_server_metadata()["extensions"]
    meta = triton.get_model_metadata(model_name)
    assert [i["name"] for i in meta["inputs"]] == ["image", "input"]
    assert not triton.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_infers_leaf_photos(triton, model_name, binary):
    import tritonclient.http as httpclient

    files = sample_files()[:4]
    data = [base64.b64encode(p.read_bytes()) if not binary else p.read_bytes() for p in files]
    image = httpclient.InferInput("image", [len(files)], "BYTES")
    image.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary)
               for n in ("probabilities", "class_name", "verdict")]
    result = triton.infer(model_name, [image], outputs=outputs, request_id="leaf-batch")
    names = [n.decode() if isinstance(n, bytes) else n for n in result.as_numpy("class_name")]
    assert names == [class_of(p) for p in files]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (4, len(CLASS_NAMES)) and np.allclose(probabilities.sum(1), 1, atol=1e-4)
    assert result.get_response()["model_name"] == model_name


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_infers_preprocessed_tensors(triton, model_name, shipped_bundle, binary):
    import tritonclient.http as httpclient

    files = sample_files()[:2]
    batch = np.stack([preprocess(shipped_bundle, decode_image(p.read_bytes())).numpy() for p in files])
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch.astype(np.float32), binary_data=binary)
    result = triton.infer(model_name, [tensor])  # no outputs named: the client asks for all of them in binary
    names = [n.decode() if isinstance(n, bytes) else n for n in result.as_numpy("class_name")]
    assert names == [class_of(p) for p in files]
    assert result.as_numpy("leaf_score").shape == (2,)


def test_tritonclient_sees_our_errors(triton, model_name):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    tensor = httpclient.InferInput("input", [1, 3, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InferenceServerException, match="must be FP32 with shape"):
        triton.infer(model_name, [tensor])
