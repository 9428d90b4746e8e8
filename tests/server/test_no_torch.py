"""The serving process must not import torch (nor the other training-only packages)."""

from __future__ import annotations

import tritonclient.grpc as tc

from client import ClassificationClient
from tests.conftest import MODEL_NAME, digit_examples, start_server

TRAINING_ONLY = ("torch", "onnx", "onnxscript", "sklearn", "matplotlib")

BLOCKER = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            with open(MARKER, "a") as f:
                f.write(name + "\\n")
            raise ImportError(name + " is blocked: the serving path must not import it")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_server_runs_and_answers_without_torch(model_repository, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    marker = tmp_path / "imported.txt"
    (site / "sitecustomize.py").write_text(f"BLOCKED = {TRAINING_ONLY!r}\nMARKER = {str(marker)!r}\n" + BLOCKER)
    s = start_server(model_repository, "--poll-interval-s", "0", env={"PYTHONPATH": str(site)}, log_dir=tmp_path)
    try:
        with ClassificationClient(s.address) as c:
            assert len(c.classify([f.read_bytes() for f in digit_examples()[:2]])) == 2
        client = tc.InferenceServerClient(s.address)
        assert client.get_model_metadata(MODEL_NAME).name == MODEL_NAME
        assert client.get_model_config(MODEL_NAME).config.name == MODEL_NAME
    finally:
        assert s.stop() == 0, s.log()
    assert not marker.exists(), f"the server tried to import: {marker.read_text()}"
