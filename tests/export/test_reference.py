"""Export records what the model answers on the test split (ModelMetadata.reference), and the server
exposes it beside live traffic (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest

from export.listing import read_model_metadata
from export.reference import summarise
from server.metrics import Metrics
from server.repository import ModelMetadata


def test_summarise_counts_top1_classes_and_confidence():
    probs = np.array([[0.905, 0.095, 0.0], [0.2, 0.705, 0.095], [0.605, 0.3, 0.095], [0.3, 0.295, 0.405]])
    ref = summarise(probs, ["x", "y", "z"], "toy:test")
    assert ref["images"] == 4 and ref["split"] == "toy:test"
    assert ref["class_share"] == {"x": 0.5, "y": 0.25, "z": 0.25}
    assert ref["confidence_quantiles"]["0.5"] == pytest.approx(np.quantile([0.905, 0.705, 0.605, 0.405], 0.5))
    hist = ref["confidence_histogram"]
    assert len(hist) == 100 and sum(hist) == pytest.approx(1.0)
    assert hist[40] == hist[60] == hist[70] == hist[90] == 0.25  # each in its 0.01-wide bin


def test_export_writes_the_reference_and_the_server_exposes_it(lenet5_published):
    md = read_model_metadata(lenet5_published.path)
    ref = md.reference
    assert ref["images"] == md.metrics["test_images"] == 359 and ref["split"] == md.extra["test_split"]
    assert set(ref["class_share"]) == set(md.labels) and sum(ref["class_share"].values()) == pytest.approx(
        1.0, abs=1e-4
    )
    # a trained digit model answers every class and is mostly confident
    assert min(ref["class_share"].values()) > 0.03 and ref["confidence_quantiles"]["0.5"] > 0.8
    q = [ref["confidence_quantiles"][k] for k in ("0.01", "0.05", "0.1", "0.25", "0.5")]
    assert q == sorted(q)
    assert sum(ref["confidence_histogram"]) == pytest.approx(1.0, abs=1e-4)

    m = Metrics(low_confidence_threshold=0.5)
    m.init_predictions("lenet", md.labels, ["logits", "probabilities"], ref, "1")
    got = m.predictions.get("lenet").reference
    assert got["share"].tolist() == pytest.approx([ref["class_share"][lab] for lab in md.labels])
    assert 0 <= got["low"] <= 0.5 and got["quantiles"]["0.5"] == ref["confidence_quantiles"]["0.5"]


def test_models_exported_before_the_reference_still_load():
    old = ModelMetadata.from_json('{"labels": ["a", "b"], "input_shape": [1, 2, 2]}')
    assert old.reference == {}
    m = Metrics()
    m.init_predictions("old", old.labels, ["probabilities"], old.reference, "1")
    assert m.predictions.get("old").reference is None
