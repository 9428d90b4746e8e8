"""fit(): checkpoint contract, reports, exact resume, schedules, early stopping, checkpoint errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from training import checkpoint as ckpt_io
from training.config import resolve_config
from training.loop import confusion_matrix, fit, steps_per_epoch
from training.optim import lr_factor

from .conftest import assert_same_run, make_idx_dir

QUICK = ["threads=1", "batch_size=64", "eval_batch_size=256"]


def _quiet(_msg: str) -> None:
    pass


class Evil:
    """An arbitrary pickled class: weights_only loading must refuse it."""


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = resolve_config("lenet5_digits", QUICK + ["epochs=3"])
    summary = fit("lenet5", "digits", cfg, out, recipe_name="lenet5_digits", log=_quiet)
    return out, summary, cfg


def test_checkpoint_contract(digits_run):
    out, summary, cfg = digits_run
    ck = ckpt_io.load_checkpoint(out / "best.pt")
    assert ck["format_version"] == 1 and ck["model_name"] == "lenet5"
    # every argument, defaults included, so a later change of a default cannot change a rebuilt model
    assert ck["model_kwargs"] == {
        "num_classes": 10,
        "in_channels": 1,
        "input_size": 28,
        "activation": "relu",
        "pool": "max",
        "dropout": 0.0,
        "batch_norm": False,
    }
    assert ck["labels"] == [str(i) for i in range(10)] and ck["input_shape"] == [1, 28, 28]
    pre = ck["preprocessing"]
    assert pre["color_mode"] == "L" and pre["height"] == pre["width"] == 28 and pre["resize"] == "bilinear"
    assert pre["scale"] == pytest.approx(1 / 255) and len(pre["mean"]) == len(pre["std"]) == 1
    assert 0.05 < pre["mean"][0] < 0.5 and 0.1 < pre["std"][0] < 0.5
    assert ck["dataset"] == "digits" and ck["recipe_name"] == "lenet5_digits"
    assert ck["recipe"] == cfg.to_dict() and len(ck["recipe_sha256"]) == 64
    assert set(ck["metrics"]) >= {"test_accuracy", "val_accuracy", "best_epoch"}
    assert ck["created"].endswith("+00:00")
    for key in ("epoch", "optimizer", "scheduler", "rng", "state_dict"):
        assert key in ck
    assert ck["metrics"]["test_accuracy"] == summary["test_accuracy"]
    # the model rebuilds from the checkpoint alone and reproduces the recorded test accuracy
    from training.augment import Normalize
    from training.data import load_dataset
    from training.loop import evaluate

    model = ckpt_io.build_model(ck)
    assert not model.training
    d = load_dataset("digits")
    acc = evaluate(model, d.test_x, d.test_y, Normalize(pre["mean"], pre["std"]))["accuracy"]
    assert acc == pytest.approx(ck["metrics"]["test_accuracy"])
    assert acc > 0.5  # three epochs are plenty to be far above chance


def test_reports_are_written(digits_run):
    out, summary, _ = digits_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_s"} <= set(rows[0])
    for png in ("curves.png", "confusion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = json.loads((out / "summary.json").read_text())
    assert s["test_accuracy"] == summary["test_accuracy"]
    assert sum(map(sum, s["confusion_matrix"])) == 359


def test_resume_is_bit_identical(tmp_path):
    overrides = QUICK + ["epochs=4", "model.dropout=0.3", "augment.crop_padding=2", "augment.erase_prob=0.5"]
    cfg = resolve_config("lenet5_digits", overrides)
    fit("lenet5", "digits", cfg, tmp_path / "a", log=_quiet)

    def interrupt_at_epoch_3(msg: str) -> None:
        if msg.startswith("epoch   3/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit("lenet5", "digits", cfg, tmp_path / "b", log=interrupt_at_epoch_3)
    assert ckpt_io.load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 2
    fit("lenet5", "digits", cfg, tmp_path / "b", resume=tmp_path / "b" / "last.pt", log=_quiet)

    a = ckpt_io.load_checkpoint(tmp_path / "a" / "last.pt")
    b = ckpt_io.load_checkpoint(tmp_path / "b" / "last.pt")
    assert_same_run(a, b, epochs=4)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 4  # no duplicated epochs


def test_resume_refuses_a_different_recipe(tmp_path, digits_run):
    out, _, _ = digits_run
    cfg = resolve_config("lenet5_digits", QUICK + ["epochs=3", "lr=0.2"])
    with pytest.raises(ValueError, match="different model, data or recipe"):
        fit("lenet5", "digits", cfg, tmp_path, resume=out / "last.pt", log=_quiet)


def test_early_stopping_and_idx_data(tmp_path):
    root, _ = make_idx_dir(tmp_path / "idx", n_train=120, n_test=40, size=16, classes=4)
    cfg = resolve_config(
        "default_gray28",
        [
            "threads=1",
            "epochs=30",
            "early_stop=2",
            "lr=1e-6",
            "batch_size=32",
            "schedule=constant",
            "augment.rotate=0",
            "channels_last=true",
        ],
    )
    logs: list[str] = []
    s = fit("resnet20", f"idx:{root}", cfg, tmp_path / "run", log=logs.append)
    assert s["early_stopped"] and s["epochs_run"] < 30
    assert any("early stop" in m for m in logs)
    assert ckpt_io.load_checkpoint(tmp_path / "run" / "best.pt")["labels"] == ["0", "1", "2", "3"]


def test_schedules():
    cfg = resolve_config("lenet5_digits", ["epochs=10", "schedule=cosine", "warmup_epochs=1", "warmup_start=0.1"])
    f = [lr_factor(s, cfg, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[10] == pytest.approx(1.0) and f[99] < 0.01
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    cfg = resolve_config("lenet5_digits", ["epochs=10", "schedule=step", "step_epochs=3", "step_gamma=0.5"])
    assert [lr_factor(e * 10, cfg, 10) for e in (0, 2, 3, 6, 9)] == [1, 1, 0.5, 0.25, 0.125]
    cfg = resolve_config("lenet5_digits", ["epochs=10", "schedule=onecycle", "onecycle_pct=0.3"])
    f = [lr_factor(s, cfg, 10) for s in range(100)]
    assert f[0] == pytest.approx(1 / 25) and max(f) == pytest.approx(1.0) and f.index(max(f)) == 30
    assert f[-1] < 1e-3
    cfg = resolve_config("lenet5_digits", ["schedule=constant"])
    assert lr_factor(500, cfg, 10) == 1.0
    assert steps_per_epoch(129, 64) == 2 and steps_per_epoch(130, 64) == 3 and steps_per_epoch(129, 128) == 1


def test_optimizers_build_and_step():
    from training.models import create_model
    from training.optim import make_optimizer

    for name, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        cfg = resolve_config("lenet5_digits", [f"optimizer={name}", "weight_decay=0.1"])
        opt = make_optimizer(create_model("lenet5"), cfg)
        assert isinstance(opt, cls)
        assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # no decay on biases
    cfg = resolve_config("lenet5_digits", ["optimizer=sgd", "nesterov=true"])
    assert make_optimizer(create_model("lenet5"), cfg).defaults["nesterov"] is True


def test_bf16_autocast_trains_in_float32_state():
    """amp=bf16: the forward pass runs in bfloat16, the parameters, gradients and optimiser stay float32,
    the loss goes down, and two runs with the same seed are identical (deterministic on CPU)."""
    from training.augment import Normalize
    from training.loop import train_one_epoch
    from training.models import create_model
    from training.optim import make_optimizer, make_scheduler

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)  # (N, C, H, W)
    y = torch.arange(64) % 4  # (N,)
    x[y == 1, :, :14] = 255  # learnable: class -> bright band
    x[y == 2, :, 14:] = 255
    x[y == 3] = 0
    norm = Normalize([0.5], [0.25])
    seen_dtypes = set()

    def run() -> tuple[list[float], nn.Module]:
        torch.manual_seed(0)
        model = create_model("resnet20", num_classes=4, in_channels=1, input_size=28)
        model.fc.register_forward_hook(lambda m, i, o: seen_dtypes.add(o.dtype))
        cfg = resolve_config("lenet5_digits", ["optimizer=adam", "lr=3e-3", "schedule=constant", "amp=bf16"])
        opt = make_optimizer(model, cfg)
        sched = make_scheduler(opt, cfg, steps_per_epoch=4)
        gen = torch.Generator().manual_seed(1)
        losses = [
            train_one_epoch(model, opt, sched, x, y, lambda xb, _g: norm(xb), gen, 16, amp="bf16")["loss"]
            for _ in range(5)
        ]
        return losses, model

    losses, model = run()
    assert seen_dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0], losses
    again, model2 = run()
    assert again == losses
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


def test_confusion_matrix():
    y = torch.tensor([0, 0, 1, 2, 2, 2])
    p = torch.tensor([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(y, p, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_bad_checkpoint_files_are_named(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ckpt_io.CheckpointError, match="junk.pt is not a readable checkpoint"):
        ckpt_io.load_checkpoint(junk)
    with pytest.raises(ckpt_io.CheckpointError, match="missing.pt does not exist"):
        ckpt_io.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "partial.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="missing format_version"):
        ckpt_io.load_checkpoint(tmp_path / "partial.pt")
    torch.save({"x": Evil()}, tmp_path / "pickle.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="pickle.pt"):
        ckpt_io.load_checkpoint(tmp_path / "pickle.pt")
