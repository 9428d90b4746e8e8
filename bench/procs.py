"""Processes under test: the server (`cnn serve`, or a scratch tree of it), the echo reference, and
what /proc says about them (resident memory, CPU time, children)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from client import testing
from client.testing import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
ECHO_LINE = re.compile(r"echo serving on (\S+):(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc(ServerProcess):
    """A process under test (a server or the echo reference), with what /proc says about it and its children."""

    def __init__(
        self,
        name: str,
        proc: subprocess.Popen,
        address: str,
        log_path: Path,
        t_spawn: float,
        t_ready_line: float,
        extra: dict | None = None,
        *,
        metrics_url: str | None = None,
    ):
        super().__init__(proc, address, metrics_url, log_path, t_spawn, t_ready_line)
        self.name = name
        self.extra = {} if extra is None else extra

    @property
    def t_ready_line(self) -> float:  # when the ready line was read
        return self.t_ready

    def pids(self) -> list[int]:
        return tree_pids(self.pid)

    def rss_bytes(self) -> int:
        """Resident memory of the process and its children (workers)."""
        return sum(rss_bytes(p) for p in self.pids())

    def cpu_s(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def rss_bytes(pid: int) -> int:
    try:
        return int(_read(f"/proc/{pid}/statm").split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def peak_rss_bytes(pid: int) -> int:
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", _read(f"/proc/{pid}/status"))
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


def cpu_seconds(pid: int) -> float:
    """user + system CPU of every thread of `pid` so far."""
    try:
        stat = _read(f"/proc/{pid}/stat")
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = _read(f"/proc/{d}/stat")
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _pin_server():
    """preexec for server-side processes: pin to BENCH_SERVER_CPUS (`--server-cpus`), if set."""
    spec = os.environ.get("BENCH_SERVER_CPUS", "")
    if spec:
        from bench.loadgen import parse_cpus

        os.sched_setaffinity(0, parse_cpus(spec))


def _env(server_root: Path | None, extra: dict | None = None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if server_root is not None and Path(server_root).resolve() != ROOT:
        env["PYTHONPATH"] = str(Path(server_root).resolve()) + (
            os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
        )
    env.update(extra or {})
    return env


def start_server(
    repository: Path,
    log_dir: Path,
    *,
    server_root: Path | None = None,
    port: int = 0,
    args: tuple[str, ...] = (),
    env: dict | None = None,
    timeout_s: float = 120,
    launcher: list[str] | None = None,
    name: str = "server",
) -> Proc:
    """`cnn serve` (from `server_root`, default this checkout) on 127.0.0.1:`port`; returns once ready."""
    root = Path(server_root or ROOT).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    s = testing.start_server(
        repository,
        "--poll-interval-s",
        "0",
        *args,
        cwd=root,
        env=_env(root, env),
        log_path=log_dir / f"{name}-{time.monotonic_ns()}.log",
        timeout_s=timeout_s,
        preexec_fn=_pin_server,
        grpc_address=f"127.0.0.1:{port}",
        launcher=launcher or ("-m", "client.cli"),
    )
    return Proc(name, s.proc, s.address, s.log_path, s.t_spawn, s.t_ready, metrics_url=s.metrics_url)


def start_echo(
    log_dir: Path, *, reply: str = "model", await_mode: str = "none", event_loop: str = "asyncio", timeout_s: float = 60
) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"echo-{time.monotonic_ns()}.log"
    cmd = [
        sys.executable,
        "-m",
        "bench.echo",
        "--port",
        "0",
        "--reply",
        reply,
        "--await-mode",
        await_mode,
        "--event-loop",
        event_loop,
    ]
    with open(log_path, "w") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, env=_env(None), preexec_fn=_pin_server
        )
    m = testing.wait_for_line(proc, ECHO_LINE, log_path, "echo server", timeout_s)
    name = (
        "echo"
        + ("" if await_mode == "none" else f"-{await_mode}")
        + ("" if event_loop == "asyncio" else f"-{event_loop}")
    )
    return Proc(name, proc, f"{m.group(1)}:{m.group(2)}", log_path, t0, time.monotonic())


# --------------------------------------------------------------------------------------------------
# protocol helpers (this process imports the server's `inference` stubs; never import it into pytest)


def stub(address: str):
    import grpc

    from protos.inference import grpc_service_pb2_grpc as pb_grpc

    ch = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return ch, pb_grpc.GRPCInferenceServiceStub(ch)


def server_ready(address: str, timeout_s: float = 1.0) -> bool:
    import grpc

    from protos.inference import grpc_service_pb2 as pb

    ch, s = stub(address)
    try:
        return s.ServerReady(pb.ServerReadyRequest(), timeout=timeout_s).ready
    except grpc.RpcError:
        return False
    finally:
        ch.close()


def batch_stats(address: str, model: str) -> dict:
    """ModelStatistics for `model`: {'inference_count', 'execution_count', 'batches': {size: (count, infer_ns)}}."""
    from protos.inference import grpc_service_pb2 as pb

    ch, s = stub(address)
    try:
        ms = s.ModelStatistics(pb.ModelStatisticsRequest(name=model), timeout=10).model_stats[0]
    finally:
        ch.close()
    return {
        "inference_count": ms.inference_count,
        "execution_count": ms.execution_count,
        "success_count": ms.inference_stats.success.count,
        "success_ns": ms.inference_stats.success.ns,
        "queue_ns": ms.inference_stats.queue.ns,
        "batches": {b.batch_size: (b.compute_infer.count, b.compute_infer.ns) for b in ms.batch_stats},
    }


def stats_delta(before: dict, after: dict) -> dict:
    out = {
        k: after[k] - before[k]
        for k in ("inference_count", "execution_count", "success_count", "success_ns", "queue_ns")
    }
    batches = {}
    for size, (c, ns) in after["batches"].items():
        c0, ns0 = before["batches"].get(size, (0, 0))
        if c - c0 > 0:
            batches[size] = (c - c0, ns - ns0)
    out["batches"] = dict(sorted(batches.items()))
    return out
