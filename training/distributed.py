"""Data-parallel training under ``torchrun``: process group, device, sharding, reductions, seeds.

``cnn train`` needs no flag to run distributed: started by ``torchrun --nproc_per_node N``, each process
finds RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in its environment, joins the process
group (gloo for CPU training, NCCL for CUDA) and wraps the model in DistributedDataParallel. A caller
that already initialised ``torch.distributed`` itself (``init_process_group``) keeps its group.

The maths is that of the single-process run with the same ``batch_size`` (the *effective* batch):

* every rank draws the same seeded permutation per epoch and takes its own contiguous part of each
  global minibatch (``batch_size / world_size`` images), so the ranks' shards are disjoint and their union
  is exactly the single-process epoch, step by step;
* DDP averages the ranks' gradients; a last partial batch split unevenly is re-weighted so the average is
  the mean over the global batch (each rank scales its mean loss by ``local_n * world_size / global_n``);
* the learning-rate schedule counts the same optimiser steps;
* loss / accuracy sums and counts are all-reduced; validation is sharded and reduced the same way;
  the test split is scored once at the end by rank 0 on the saved checkpoints, as in a single process.

Differences by design: augmentation and dropout draw from per-rank generators (seeded from the seed,
the rank and the epoch), and BatchNorm normalises over each rank's part of the batch unless
``sync_bn = true`` (CUDA only: torch's SyncBatchNorm does not run on CPU tensors).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch

from training.errors import ConfigError

DEVICES = ("cpu", "cuda", "auto")


@dataclass
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str = ""  # "gloo" | "nccl" once a process group is in use; "" for a single process
    owns_group: bool = False  # True when setup() created the process group (and teardown() ends it)

    @property
    def enabled(self) -> bool:
        """More than one process: DDP, sharding and reductions are on."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs and writes files; the others stay quiet."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def env_rank() -> int:
    """This process's rank as torchrun says (0 outside torchrun)."""
    try:
        return _env_int("RANK", 0)
    except ConfigError:
        return 0


def resolve_device(request: str, local_rank: int, distributed: bool) -> torch.device:
    """ "cpu" | "cuda" | "auto" -> a torch.device; under DDP each process takes cuda:LOCAL_RANK."""
    if request not in DEVICES:
        raise ConfigError(f"unknown device {request!r}; expected one of {', '.join(DEVICES)}")
    if request == "auto":
        request = "cuda" if torch.cuda.is_available() else "cpu"
    if request == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to this process")
    if distributed:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                f"start at most that many processes per node"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cuda", torch.cuda.current_device())


def context(device: str = "cpu") -> DistContext:
    """Read the process layout (an existing process group, else torchrun's environment) without joining
    anything yet, so configuration errors surface before any rank waits on another."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        backend = str(dist.get_backend())
    else:
        world = _env_int("WORLD_SIZE", 1)
        if world < 1:
            raise ConfigError(f"WORLD_SIZE={world} must be >= 1")
        rank = _env_int("RANK", 0)
        local_rank = _env_int("LOCAL_RANK", 0)
        local_world = _env_int("LOCAL_WORLD_SIZE", 1 if world == 1 else world)
        if not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world - 1})")
        backend = ""
        if world > 1:
            if not dist.is_available():
                raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if not os.environ.get(name):
                    raise ConfigError(f"WORLD_SIZE={world} but {name} is not set; start with torchrun")
    dev = resolve_device(device, local_rank, world > 1)
    if world > 1 and not backend:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError("the process group uses NCCL, which needs --device cuda")
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        local_world_size=max(1, local_world),
        device=dev,
        backend=backend,
    )


def setup(ctx: DistContext) -> DistContext:
    """Join the process group torchrun describes (env://), unless one exists or there is one process."""
    import torch.distributed as dist

    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    if not ctx.enabled or dist.is_initialized():
        return ctx
    dist.init_process_group(backend=ctx.backend, init_method="env://", rank=ctx.rank, world_size=ctx.world_size)
    ctx.owns_group = True
    return ctx


_ended_own_group = False  # this process created a process group in setup() and destroyed it in teardown()


def teardown(ctx: DistContext) -> None:
    global _ended_own_group
    import torch.distributed as dist

    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        ctx.owns_group = False
        _ended_own_group = True


def ended_own_group() -> bool:
    """True once teardown() destroyed a group setup() created here (a torchrun worker whose run is over)."""
    return _ended_own_group


def check_config(cfg, ctx: DistContext) -> None:
    """Refuse what cannot work before any process waits on another."""
    if not ctx.enabled:
        return
    if cfg.batch_size % ctx.world_size:
        lower = cfg.batch_size - cfg.batch_size % ctx.world_size
        raise ConfigError(
            f"recipe key 'batch_size': {cfg.batch_size} is not divisible by the {ctx.world_size} "
            f"processes; batch_size is the effective (global) batch and each process takes "
            f"batch_size / world_size images per step (try --set batch_size={lower or ctx.world_size})"
        )
    if cfg.sync_bn and ctx.device.type != "cuda":
        raise ConfigError(
            "recipe key 'sync_bn': torch's SyncBatchNorm runs on CUDA tensors only, not on CPU "
            "(gloo); drop it to normalise over each process's part of the batch, or use --device cuda"
        )


def shard(idx: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's contiguous part of a global index slice (parts differ in size by at most one)."""
    if not ctx.enabled:
        return idx
    return idx.tensor_split(ctx.world_size)[ctx.rank]


def all_reduce_sum(values: list[float | torch.Tensor], ctx: DistContext) -> list[float]:
    """Sum float64 scalars over the ranks (one collective); identity for a single process."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64).detach().reshape(()).cpu() for v in values])
    if ctx.enabled:
        import torch.distributed as dist

        t = t.to(ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics): the state the checkpoint stores."""
    if not ctx.enabled:
        return
    import torch.distributed as dist

    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from the run seed and labels such as ("augment", rank, epoch); stable across runs."""
    blob = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)
