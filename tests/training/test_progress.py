"""Progress display: a tqdm bar on a terminal (a real pty), plain lines when the stream is not a terminal,
nothing with CNN_PROGRESS=off; and that training epochs, export verification and INT8 calibration show it."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch

from training.progress import Progress, progress_mode, track


def _pty_output(write) -> str:
    """Run ``write(stream)`` with stream the slave side of a real pseudo-terminal; return what arrived."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    os.set_blocking(master, False)
    stream = os.fdopen(slave, "w", buffering=1)
    try:
        assert stream.isatty()
        write(stream)
        stream.flush()
    finally:
        stream.close()
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_tqdm_bar(monkeypatch):
    monkeypatch.delenv("CNN_PROGRESS", raising=False)

    def work(stream):
        with Progress(40, "epoch 1/3", "batch", stream=stream, leave=True) as p:
            assert p.mode == "bar"
            for i in range(40):
                p.update(1, loss=1.0 / (i + 1))

    out = _pty_output(work)
    assert "\r" in out  # redrawn in place, not one line per step
    assert "epoch 1/3" in out and "40/40" in out and "100%" in out and "loss=" in out
    assert "█" in out or "#" in out  # the bar itself


def test_a_file_gets_plain_lines_per_quarter(monkeypatch):
    monkeypatch.delenv("CNN_PROGRESS", raising=False)
    s = io.StringIO()
    assert progress_mode(s) == "lines"
    with Progress(100, "epoch 2/5", "batch", stream=s, unit_scale=64, rate_unit="img", plain_final=False) as p:
        for _ in range(100):
            p.update(1, loss=0.5)
    lines = s.getvalue().splitlines()
    assert [ln.split(":")[1].split("%")[0].strip() for ln in lines] == ["25", "50", "75"]
    assert all(ln.startswith("epoch 2/5:") and "batch)" in ln and "img/s" in ln and "loss 0.5" in ln for ln in lines)
    assert "\r" not in s.getvalue()
    s = io.StringIO()
    list(track(range(8), "verify", stream=s))  # a known length: 25 % ... 100 %
    assert s.getvalue().splitlines()[-1].startswith("verify: 100% (8/8 it)")
    s = io.StringIO()
    with Progress(None, "calibration", "img", stream=s) as p:  # unknown total: one closing count
        p.update(32)
        p.update(32)
    assert s.getvalue().splitlines() == [s.getvalue().splitlines()[0]] and "64 img" in s.getvalue()


def test_environment_chooses_or_silences(monkeypatch):
    s = io.StringIO()
    monkeypatch.setenv("CNN_PROGRESS", "off")
    with Progress(4, "x", stream=s) as p:
        p.update(4)
    assert s.getvalue() == ""
    monkeypatch.setenv("CNN_PROGRESS", "lines")
    assert progress_mode(s) == "lines"
    monkeypatch.setenv("CNN_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="CNN_PROGRESS must be one of auto, bar, lines, off"):
        progress_mode(s)


def test_training_epoch_reports_progress_when_output_is_not_a_terminal(capsys, monkeypatch):
    from training.augment import Normalize
    from training.data import load_dataset
    from training.loop import train_one_epoch
    from training.models import create_model

    monkeypatch.delenv("CNN_PROGRESS", raising=False)
    d = load_dataset("digits")
    model = create_model("lenet5")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    norm = Normalize(*d.mean_std())
    x, y = d.train_x[:512], d.train_y[:512]
    train_one_epoch(
        model, opt, sched, x, y, lambda xb, g: norm(xb), torch.Generator().manual_seed(0), 32, progress="epoch 1/1"
    )
    err = capsys.readouterr().err.splitlines()
    assert [ln.split("%")[0] for ln in err] == ["epoch 1/1:  25", "epoch 1/1:  50", "epoch 1/1:  75"]
    assert all("(" in ln and "/16 batch)" in ln for ln in err)
    train_one_epoch(model, opt, sched, x, y, lambda xb, g: norm(xb), torch.Generator().manual_seed(0), 32)
    assert capsys.readouterr().err == ""  # no label, no progress (bench, tests, other ranks)


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["input"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [inp],
        [logits, probs],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_export_verification_and_int8_calibration_report_progress(tmp_path, capsys, monkeypatch):
    from export import verify
    from export.quantize import _Reader

    monkeypatch.setenv("CNN_PROGRESS", "lines")
    path = _tiny_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    y = x.argmax(1)
    batches = ((x[i : i + 10], y[i : i + 10]) for i in range(0, 100, 10))
    preds, labels = verify.predictions(path, batches, batch_size=10, total=100)
    assert (preds == labels).all()
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == err[-1] and err[-1].startswith("verify: test accuracy of m.onnx: 100% (100/100 img)")
    assert len(err) == 4
    reader = _Reader(x, 32)
    fed = 0
    while (batch := reader.get_next()) is not None:
        fed += len(batch["input"])
    assert fed == 100
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("int8: calibration: 100% (100/100 img)") and len(err) == 4
