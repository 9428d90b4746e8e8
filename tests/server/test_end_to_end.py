"""The walking skeleton, end to end: trained LeNet-5 -> ONNX -> server -> clients."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from client import ClassificationClient
from server.repository import METADATA_KEY, ModelMetadata
from tests.conftest import MODEL_NAME, cnn, digit_examples


def _model_file(repo):
    return repo / MODEL_NAME / "1" / "model.onnx"


def _preprocess(path, md: ModelMetadata) -> np.ndarray:
    """What the model expects, computed independently of server/imaging.py."""
    pre = md.preprocessing
    img = np.asarray(Image.open(path).convert(pre.color_mode).resize((pre.width, pre.height)), dtype=np.float32)
    x = img[None] * pre.scale
    return ((x - np.float32(pre.mean[0])) / np.float32(pre.std[0])).astype(np.float32)  # (1, H, W)


def test_classify_sample_digits_with_own_client(server):
    files = digit_examples()
    with ClassificationClient(server.address) as c:
        results = c.classify([f.read_bytes() for f in files], top_k=3)
        model, version = c.last_model
    assert (model, version) == (MODEL_NAME, "1")
    assert len(results) == len(files)
    correct = 0
    for f, preds in zip(files, results):
        assert len(preds) == 3
        probs = [p.probability for p in preds]
        assert probs == sorted(probs, reverse=True) and 0.0 <= probs[-1] <= probs[0] <= 1.0
        assert preds[0].label == str(preds[0].index)
        correct += preds[0].label == f.name.split("_")[0]
    assert correct >= 0.9 * len(files), f"only {correct} of {len(files)} sample digits classified correctly"


def test_cnn_classify_command_json(server):
    files = digit_examples()[:3]
    proc = cnn("classify", *map(str, files), "--server", server.address, "--top-k", "2", "--json")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [d["image"] for d in lines] == [str(f) for f in files]
    for d in lines:
        assert len(d["top_k"]) == 2 and set(d["top_k"][0]) == {"label", "index", "probability"}


def test_cnn_classify_plain_and_bad_server(server, tmp_path):
    f = digit_examples()[0]
    proc = cnn("classify", str(f), "--server", server.address)
    assert proc.stdout.startswith(f"{f}: ") and proc.stdout.count("(") == 3
    missing = cnn("classify", str(tmp_path / "nope.png"), "--server", server.address, check=False)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_tritonclient_metadata_config_and_infer_match_onnxruntime(server, model_repository):
    client = tc.InferenceServerClient(server.address)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL_NAME)

    meta = client.get_model_metadata(MODEL_NAME)
    assert meta.name == MODEL_NAME and list(meta.versions) == ["1"] and meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, 1, 28, 28])]
    assert {t.name: list(t.shape) for t in meta.outputs} == {"logits": [-1, 10], "probabilities": [-1, 10]}

    config = client.get_model_config(MODEL_NAME).config
    assert config.name == MODEL_NAME and config.platform == "onnxruntime_onnx" and config.max_batch_size >= 16
    assert config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [1, 28, 28])]
    assert sorted(o.name for o in config.output) == ["logits", "probabilities"]

    sess = ort.InferenceSession(str(_model_file(model_repository)), providers=["CPUExecutionProvider"])
    md = ModelMetadata.from_json(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
    files = digit_examples()
    x = np.stack([_preprocess(f, md) for f in files])  # (N, 1, 28, 28)
    expected = sess.run(["logits"], {"input": x})[0]

    raw = tc.InferInput("input", list(x.shape), "FP32")
    raw.set_data_from_numpy(x)  # raw_input_contents
    result = client.infer(MODEL_NAME, [raw], outputs=[tc.InferRequestedOutput("logits")])
    got = result.as_numpy("logits")
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert result.get_response().model_version == "1"

    # typed contents (fp32_contents) give the same answer
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=MODEL_NAME)
    t = req.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    t.contents.fp32_contents.extend(x[0].ravel().tolist())
    resp = client._client_stub.ModelInfer(req)
    logits = {o.name: i for i, o in enumerate(resp.outputs)}["logits"]
    typed = np.frombuffer(resp.raw_output_contents[logits], dtype="<f4").reshape(1, 10)
    np.testing.assert_allclose(typed, expected[:1], rtol=1e-5, atol=1e-5)

    # the probabilities output is a softmax of the logits
    probs = client.infer(MODEL_NAME, [raw], outputs=[tc.InferRequestedOutput("probabilities")]).as_numpy(
        "probabilities"
    )
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == expected.argmax(1)).all()


def test_metrics_endpoint_counts_requests(server):
    def infer_ok() -> float:
        text = server.metrics_text()
        for fam in text_string_to_metric_families(text):
            if fam.name == "cnn_requests":
                return sum(
                    s.value
                    for s in fam.samples
                    if s.name == "cnn_requests_total"
                    and s.labels["rpc"] == "Classify"
                    and s.labels["model"] == MODEL_NAME
                    and s.labels["code"] == "OK"
                )
        return 0.0

    before = infer_ok()
    with ClassificationClient(server.address) as c:
        for f in digit_examples()[:4]:
            c.classify([f.read_bytes()])
    assert infer_ok() == before + 4
    text = server.metrics_text()
    assert "cnn_request_duration_seconds_bucket" in text
    assert f'cnn_model_loaded_info{{model="{MODEL_NAME}",provider="CPUExecutionProvider",version="1"}} 1.0' in text


@pytest.mark.parametrize("name", ["", "nope"])
def test_unknown_model_is_not_found_and_server_keeps_serving(server, name):
    import grpc

    with ClassificationClient(server.address) as c:
        if name:
            with pytest.raises(grpc.RpcError) as e:
                c.classify([digit_examples()[0].read_bytes()], model=name)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.value.details()
        assert c.classify([digit_examples()[0].read_bytes()])[0]


def test_classify_large_photo_is_decoded_off_the_loop_with_the_same_answer(server):
    """An image whose decoded pixels exceed INLINE_DECODE_MAX_BYTES goes through the worker-thread decode path
    and gets the answer the same digit gets on the inline path: nearest-neighbour upscales of one sample,
    9x (252x252, decoded inline) and 16x (448x448, stored uncompressed, decoded by a worker). Both are
    photo-sized, so both take the full digit normalisation (a 28x28 MNIST-form image would pass through)."""
    import io

    from server.core.service import INLINE_DECODE_MAX_BYTES

    f = digit_examples()[0]
    digit = Image.open(f).convert("L")
    files = []
    for factor in (9, 16):
        buf = io.BytesIO()
        digit.resize((digit.width * factor, digit.height * factor), Image.NEAREST).save(buf, "PNG", compress_level=0)
        files.append(buf.getvalue())
    small, big = files
    assert (28 * 9) ** 2 <= INLINE_DECODE_MAX_BYTES < (28 * 16) ** 2 and len(big) > INLINE_DECODE_MAX_BYTES
    with ClassificationClient(server.address) as c:
        [want], [got] = c.classify([small], top_k=3), c.classify([big], top_k=3)
    assert [p.label for p in got][:1] == [p.label for p in want][:1]
    assert abs(got[0].probability - want[0].probability) < 0.05
