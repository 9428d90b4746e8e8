"""Data-parallel training (DDP, gloo, 2 processes on 127.0.0.1) against the single-process run.

* torchrun + the real `cnn train` command (training.cli): LeNet-5 on digits, effective batch 64 (32 per
  process), augmentation off, matches the single-process run in weights and accuracy; rank 1 prints
  nothing and rank 0 writes exactly the files of a single-process run.
* torch.multiprocessing.spawn around fit(): with augmentation and dropout on, a DDP run resumed from its
  epoch-1 checkpoint (by both ranks, from the file rank 0 wrote) ends bit-identical to an uninterrupted
  DDP run; rank 1, given its own output directory, never creates it; an uneven last batch split 4/3
  over the ranks is weighted so that the run matches the single-process one.
* No processes: sharding, the step count, the seeds, and the errors raised before any rank waits.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from training import checkpoint as ckpt_io
from training import distributed
from training.config import resolve_config
from training.loop import fit, steps_per_epoch

from .conftest import assert_same_run, make_idx_dir


def test_torch_distributed_with_gloo_is_available():
    """The pinned CPU torch ships gloo; if this fails, the install is broken (no skip hides it)."""
    assert dist.is_available() and dist.is_gloo_available()


REPO = Path(__file__).resolve().parents[2]
# lenet5_digits with a gentler peak lr (0.02): 3 epochs reach ~93 % validation accuracy without the
# loss spike of lr 0.05, where float rounding differences grow fastest. Augmentation off: by design the
# ranks draw their own augmentation, so only without it is the single-process run the exact reference.
COMPARE = [
    "threads=1",
    "batch_size=64",
    "eval_batch_size=256",
    "lr=0.02",
    "augment.rotate=0",
    "augment.translate=0",
    "augment.scale=0",
]
# Everything random on: per-rank augmentation and dropout streams must survive a resume exactly.
# Constant lr so that a 1-epoch run extended to 2 follows the same schedule as a 2-epoch run.
RANDOM = [
    "threads=1",
    "batch_size=64",
    "eval_batch_size=256",
    "lr=0.02",
    "schedule=constant",
    "model.dropout=0.3",
    "augment.crop_padding=2",
    "augment.erase_prob=0.5",
]
# idx data with 135 training images: batch 16 leaves 7, split 4 / 3 over two ranks.
# No BatchNorm there (the gray28 recipe has it on): per-rank batch statistics differ by design.
UNEVEN = [
    "threads=1",
    "batch_size=16",
    "eval_batch_size=256",
    "augment.rotate=0",
    "augment.translate=0",
    "augment.scale=0",
    "epochs=2",
    "model.batch_norm=false",
]


def _quiet(_msg: str) -> None:
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo would otherwise bind to whatever the hostname resolves to
    return env


def _torchrun(args: list[str]) -> subprocess.Popen:
    """Start `torchrun --nproc_per_node 2 ... -m training.cli train ARGS` (what `torchrun ... $(which cnn)
    train` runs); --tee 3 prefixes every line of rank r with "[default<r>]:"."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "--tee",
        "3",
        "-m",
        "training.cli",
        "train",
        *args,
    ]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}"
    return out


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _compare(ddp: dict, single: dict) -> dict[str, float]:
    """The agreement numbers between a DDP checkpoint and a single-process one."""
    val_gap = max(abs(x["val_accuracy"] - y["val_accuracy"]) for x, y in zip(ddp["history"], single["history"]))
    return {
        "max_abs_weight_diff": _max_abs_diff(ddp["state_dict"], single["state_dict"]),
        "max_val_accuracy_gap": val_gap,
        "ddp_val_accuracy": ddp["history"][-1]["val_accuracy"],
        "single_val_accuracy": single["history"][-1]["val_accuracy"],
        "train_loss_gap": abs(ddp["history"][-1]["train_loss"] - single["history"][-1]["train_loss"]),
    }


# ----------------------------------------------------------------------------- torchrun + the CLI


@pytest.fixture(scope="module")
def torchrun_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_cli")
    ddp, single = root / "ddp", root / "single"
    t0 = time.perf_counter()
    proc = _torchrun(
        [
            "--model",
            "lenet5",
            "--data",
            "digits",
            "--out",
            str(ddp),
            "--epochs",
            "3",
            *[a for kv in COMPARE for a in ("--set", kv)],
        ]
    )
    try:  # the reference run, here, while torchrun starts its processes
        cfg = resolve_config("lenet5_digits", COMPARE + ["epochs=3"])
        fit("lenet5", "digits", cfg, single, recipe_name="lenet5_digits", log=_quiet)
    finally:
        stdout = _wait(proc)
    return {
        "root": root,
        "stdout": stdout,
        "files": sorted(p.name for p in ddp.iterdir()),
        "seconds": time.perf_counter() - t0,
    }


def test_torchrun_matches_the_single_process_run(torchrun_runs):
    root = torchrun_runs["root"]
    d = ckpt_io.load_checkpoint(root / "ddp" / "last.pt")
    s = ckpt_io.load_checkpoint(root / "single" / "last.pt")
    agreement = _compare(d, s)
    print(
        "DDP vs single process after 3 epochs:",
        json.dumps(agreement),
        f"(torchrun + single run {torchrun_runs['seconds']:.0f}s)",
    )
    assert d["epoch"] == s["epoch"] == 3
    assert agreement["max_abs_weight_diff"] < 1e-4, agreement  # measured ~2e-7: only float summation order
    assert agreement["max_val_accuracy_gap"] <= 0.01, agreement  # within a point at every epoch
    assert agreement["ddp_val_accuracy"] > 0.8  # and the run actually learned
    assert d["distributed"] == {"world_size": 2, "backend": "gloo", "per_rank_batch_size": 32}
    assert d["recipe"] == s["recipe"] and d["recipe_sha256"] == s["recipe_sha256"]
    assert d["recipe"]["batch_size"] == 64  # the recipe keeps the effective batch
    assert abs(d["metrics"]["test_accuracy"] - s["metrics"]["test_accuracy"]) <= 0.01
    summary = json.loads((root / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"


def test_torchrun_rank0_alone_logs_and_writes(torchrun_runs):
    assert torchrun_runs["files"] == [
        "best.pt",
        "confusion.png",
        "curves.png",
        "last.pt",
        "metrics.jsonl",
        "summary.json",
    ]  # no stray temporary or per-rank files
    out = torchrun_runs["stdout"].splitlines()
    assert not [ln for ln in out if ln.startswith("[default1]")]  # rank 1 prints nothing
    assert any(ln.startswith("[default0]:epoch   3/3") for ln in out)
    out0 = torchrun_runs["stdout"]
    assert "distributed: 2 processes (gloo), 32 images per process per step (effective batch 64)" in out0


# ----------------------------------------------------------------------------- spawn + fit()


def _worker(rank: int, port: int, tmp: str, idx_root: str) -> None:
    """One of two ranks: a process group of our own (tcp://), then several fit() calls inside it."""
    os.environ.update({"LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2"})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tmp_dir, logs = Path(tmp), []
    try:
        two = resolve_config("lenet5_digits", RANDOM + ["epochs=2"])
        one = resolve_config("lenet5_digits", RANDOM + ["epochs=1"])
        fit("lenet5", "digits", two, tmp_dir / f"straight_r{rank}", log=logs.append)
        fit("lenet5", "digits", one, tmp_dir / f"resumed_r{rank}", log=logs.append)
        # every rank resumes from the file rank 0 wrote (a shared directory, as on one machine)
        fit(
            "lenet5",
            "digits",
            two,
            tmp_dir / f"resumed_r{rank}",
            resume=tmp_dir / "resumed_r0" / "last.pt",
            log=logs.append,
        )
        fit(
            "lenet5",
            f"idx:{idx_root}",
            resolve_config("lenet5_gray28", UNEVEN),
            tmp_dir / f"uneven_r{rank}",
            log=logs.append,
        )
    finally:
        (tmp_dir / f"log_r{rank}.json").write_text(json.dumps(logs))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawn_runs(tmp_path_factory):
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp_spawn")
    idx_root, _ = make_idx_dir(tmp / "idx", n_train=151, n_test=40, classes=4)
    old = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME")}
    os.environ.update({k: v for k, v in _env().items() if k in old})  # inherited by the spawned ranks
    t0 = time.perf_counter()
    try:
        procs = mp.spawn(_worker, args=(_free_port(), str(tmp), str(idx_root)), nprocs=2, join=False)
        deadline = time.monotonic() + 300
        while not procs.join(timeout=5):
            if time.monotonic() > deadline:
                for p in procs.processes:
                    p.kill()
                pytest.fail("the spawned DDP ranks did not finish within 300 s")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return tmp, idx_root, time.perf_counter() - t0


def test_ddp_resume_is_bit_identical(spawn_runs):
    tmp, _, seconds = spawn_runs
    a = ckpt_io.load_checkpoint(tmp / "straight_r0" / "last.pt")
    b = ckpt_io.load_checkpoint(tmp / "resumed_r0" / "last.pt")
    assert_same_run(a, b, epochs=2)
    assert len((tmp / "resumed_r0" / "metrics.jsonl").read_text().splitlines()) == 2
    print(f"spawned ranks: 4 fits in {seconds:.0f}s")


def test_only_rank0_writes_and_logs(spawn_runs):
    tmp, _, _ = spawn_runs
    for run in ("straight", "resumed", "uneven"):
        assert (tmp / f"{run}_r0" / "last.pt").is_file(), run
        assert not (tmp / f"{run}_r1").exists(), run  # rank 1 was given its own directory and never made it
    assert json.loads((tmp / "log_r1.json").read_text()) == []
    logs0 = json.loads((tmp / "log_r0.json").read_text())
    assert any(m.startswith("resuming") for m in logs0)
    assert any(m.startswith("distributed: 2 processes") for m in logs0)
    assert not any("left out" in m for m in logs0)  # 7 images left over: 4 + 3, kept


def test_uneven_last_batch_matches_the_single_process_run(spawn_runs, tmp_path):
    tmp, idx_root, _ = spawn_runs
    cfg = resolve_config("lenet5_gray28", UNEVEN)
    fit("lenet5", f"idx:{idx_root}", cfg, tmp_path / "single", log=_quiet)
    d = ckpt_io.load_checkpoint(tmp / "uneven_r0" / "last.pt")
    s = ckpt_io.load_checkpoint(tmp_path / "single" / "last.pt")
    assert steps_per_epoch(135, 16, 2) == steps_per_epoch(135, 16) == 9  # 8 full steps + 7 images as 4 + 3
    agreement = _compare(d, s)
    print("uneven last batch, DDP vs single process:", json.dumps(agreement))
    # unweighted, the 4/3 split moves the weights by ~1e-3; weighted, only float rounding is left
    assert agreement["max_abs_weight_diff"] < 1e-5, agreement
    assert agreement["train_loss_gap"] < 1e-5, agreement


# ----------------------------------------------------------------------------- no processes


def test_shards_are_disjoint_and_cover_every_epoch():
    n, batch = 1258, 64
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    for world in (2, 3, 4):
        if batch % world:
            continue
        seen = []
        for i in range(steps_per_epoch(n, batch, world)):
            idx = perm[i * batch : (i + 1) * batch]
            parts = [distributed.shard(idx, distributed.DistContext(rank=r, world_size=world)) for r in range(world)]
            assert torch.equal(torch.cat(parts), idx)  # the union of the ranks' parts is the global batch
            assert max(map(len, parts)) - min(map(len, parts)) <= 1 and min(map(len, parts)) >= 2
            if len(idx) == batch:
                assert all(len(p) == batch // world for p in parts)
            seen += [p for p in parts]
        assert torch.equal(torch.cat(seen), perm[: len(torch.cat(seen))])
    # the remainder is kept when every rank gets two images of it, as a single process keeps 2 or more
    assert steps_per_epoch(1258, 64) == steps_per_epoch(1258, 64, 2) == 20  # 42 left: 21 + 21
    assert steps_per_epoch(131, 64, 2) == 2 and steps_per_epoch(131, 64) == 3  # 3 left: dropped under DDP
    assert steps_per_epoch(132, 64, 2) == 3


def test_per_rank_seeds_differ_and_are_stable():
    seeds = {distributed.derive_seed(0, "augment", r, e) for r in range(4) for e in range(1, 6)}
    assert len(seeds) == 20 and all(0 <= s < 2**63 for s in seeds)
    assert distributed.derive_seed(0, "augment", 1, 3) == distributed.derive_seed(0, "augment", 1, 3)
    assert distributed.derive_seed(0, "augment", 1, 3) != distributed.derive_seed(0, "torch", 1, 3)


def test_errors_surface_before_any_rank_waits(monkeypatch, tmp_path, capsys):
    import argparse

    from training.cli import add_train_parser

    parser = argparse.ArgumentParser(prog="cnn")
    add_train_parser(parser.add_subparsers(dest="command"))
    for k, v in {
        "WORLD_SIZE": "3",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(k, v)
    args = parser.parse_args(["train", "--out", str(tmp_path / "x"), "--set", "batch_size=32", "--epochs", "1"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnn train [rank 1]: error: recipe key 'batch_size': 32 is not divisible by the 3 ")
    assert "--set batch_size=30" in err and len(err.strip().splitlines()) == 1
    assert not dist.is_initialized()

    cfg = resolve_config("resnet20_fashion_mnist", ["sync_bn=true", "batch_size=64"])
    ctx = distributed.DistContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="SyncBatchNorm runs on CUDA tensors only"):
        distributed.check_config(cfg, ctx)
    distributed.check_config(resolve_config("resnet20_fashion_mnist", ["batch_size=64"]), ctx)  # fine
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(ValueError, match="MASTER_PORT is not set; start with torchrun"):
        distributed.context("cpu")


def test_old_checkpoints_without_new_recipe_keys_still_resume(tmp_path):
    """A recipe saved before ``sync_bn`` existed resumes: missing keys take their defaults."""
    from training.loop import _same_recipe

    cfg = resolve_config("lenet5_digits", ["epochs=2"])
    old = cfg.to_dict()
    del old["sync_bn"]
    assert _same_recipe(cfg.to_dict(), old)
    assert not _same_recipe(cfg.to_dict(), {**old, "lr": 0.5})
    assert not _same_recipe(cfg.to_dict(), {**old, "nonsense": 1})
