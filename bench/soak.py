"""Soak run: a long stream of mixed traffic against one server; does its resident memory stay flat?

    python -m bench.soak --repository REPO [--requests 100000] [--concurrency 16] [--out DIR]
    python -m bench.soak --checkpoint RUN/best.pt            # export it into a scratch repository first
    python -m bench.soak --address HOST:PORT --pid PID         # an already running server

Starts `cnn serve` on free ports (unless --address), warms it up, then sends --requests requests in
--samples chunks from asyncio clients (closed loop, --concurrency in flight). The traffic mixes the
paths a leak could hide in: ModelInfer of 1 and 8 rows, Classify of 1 and 4 PNGs, NaN inputs, and
refused requests (bad shape, unknown model, not an image) and a hostile slice (typed contents for 1,000
rows, a 16-bit megapixel PNG, a Classify call above the pixel budget), each checked against its expected status
code. After the warm-up and after every chunk it samples the server's VmRSS, VmHWM, threads and open
file descriptors from /proc. Reported: RSS growth from warm-up to end (%), the fitted slope (KiB per
10,000 requests), throughput, latency percentiles, every unexpected status, the server's own request
counters, hardware and versions. Writes soak.json and soak.md into --out (default
runs/soak/<UTC time>). Exit status 1 if growth exceeds --max-growth-pct or any answer was unexpected.

Not part of the tests: it takes minutes. The tests' bounded-memory check is in tests/reliability/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import grpc
import numpy as np

from client.testing import start_server

ROOT = Path(__file__).resolve().parent.parent
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY = "/cnn.v1.Classification/Classify"
SERVER_LIVE = "/inference.GRPCInferenceService/ServerLive"


# --------------------------------------------------------------------------------------------------
# the traffic


@dataclass
class Kind:
    name: str
    method: str
    payload: bytes
    expect: str  # the status code name this request must get
    weight: int


def traffic(model: str) -> list[Kind]:
    """Pre-serialised requests (the client spends its CPU on gRPC, not on protobuf) and their weights."""
    from protos.cnn import classification_pb2 as cpb
    from protos.inference import grpc_service_pb2 as pb  # a standalone process: no tritonclient here

    rng = np.random.default_rng(0)

    def infer(rows: int, shape=(1, 28, 28), name: str = model, fill: float | None = None) -> bytes:
        x = rng.standard_normal((rows, *shape)).astype("<f4") if fill is None else np.full((rows, *shape), fill, "<f4")
        req = pb.ModelInferRequest(model_name=name)
        req.inputs.add(name="input", datatype="FP32", shape=[rows, *shape])
        req.raw_input_contents.append(x.tobytes())
        return req.SerializeToString()

    pngs = [p.read_bytes() for p in sorted((ROOT / "examples" / "digits").glob("*.png"))]
    if not pngs:
        raise SystemExit("bench.soak: examples/digits/*.png not found (the sample digits ship with the repository)")

    def classify(images: list[bytes], name: str = model) -> bytes:
        return cpb.ClassifyRequest(
            model_name=name, top_k=3, images=[cpb.Image(encoded=b) for b in images]
        ).SerializeToString()

    return [
        Kind("infer-1", MODEL_INFER, infer(1), "OK", 45),
        Kind("infer-8", MODEL_INFER, infer(8), "OK", 15),
        Kind("classify-1", CLASSIFY, classify(pngs[:1]), "OK", 15),
        Kind("classify-4", CLASSIFY, classify(pngs[:4]), "OK", 5),
        Kind("infer-nan", MODEL_INFER, infer(1, fill=float("nan")), "OK", 5),
        Kind("bad-shape", MODEL_INFER, infer(1, shape=(1, 27, 28)), "INVALID_ARGUMENT", 5),
        Kind("unknown-model", MODEL_INFER, infer(1, name="no-such-model"), "NOT_FOUND", 4),
        Kind("not-an-image", CLASSIFY, classify([b"this is not an image"]), "INVALID_ARGUMENT", 4),
        Kind("truncated-png", CLASSIFY, classify([pngs[0][: len(pngs[0]) // 2]]), "INVALID_ARGUMENT", 2),
        *hostile(model, infer, classify),
    ]


def hostile(model: str, infer, classify) -> list[Kind]:
    """A slice of hostile requests (issue 18): typed contents for far more rows than the model takes, a
    16-bit PNG whose few KB declare a megapixel, and a call above the per-call pixel budget."""
    import io

    from PIL import Image

    from protos.inference import grpc_service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add(name="input", datatype="FP32", shape=[1000, 1, 28, 28])
    t.contents.fp32_contents.extend(np.zeros(1000 * 28 * 28, np.float32).tolist())

    def png(side: int, dtype) -> bytes:
        a = np.zeros((side, side), dtype)
        a[0, 0] = 40000 if dtype == np.uint16 else 200
        buf = io.BytesIO()
        (Image.fromarray(a) if dtype == np.uint16 else Image.fromarray(a, "L")).save(buf, "PNG")
        return buf.getvalue()

    return [
        Kind("typed-1000-rows", MODEL_INFER, req.SerializeToString(), "INVALID_ARGUMENT", 1),
        Kind("classify-16bit-1M", CLASSIFY, classify([png(1024, np.uint16)]), "OK", 1),
        Kind("classify-over-budget", CLASSIFY, classify([png(4096, np.uint8)] * 8), "RESOURCE_EXHAUSTED", 1),
    ]


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    unexpected: int = 0
    by_kind: dict | None = None
    samples: list | None = None  # unexpected answers, first few

    def __post_init__(self) -> None:
        self.by_kind, self.samples = {}, []


async def run_chunk(
    channel: grpc.aio.Channel,
    schedule: list[Kind],
    start: int,
    n: int,
    concurrency: int,
    tally: Tally,
    latencies: list[float],
    timeout_s: float,
) -> None:
    calls = {m: channel.unary_unary(m) for m in (MODEL_INFER, CLASSIFY)}  # bytes in, bytes out
    counter = iter(range(start, start + n))

    async def worker() -> None:
        for i in counter:
            kind = schedule[i % len(schedule)]
            t0 = time.perf_counter()
            detail = ""
            try:
                await calls[kind.method](kind.payload, timeout=timeout_s)
                code = "OK"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
                detail = e.details()
            latencies.append(time.perf_counter() - t0)
            tally.sent += 1
            tally.ok += code == "OK"
            counts = tally.by_kind.setdefault(kind.name, {})
            counts[code] = counts.get(code, 0) + 1
            if code != kind.expect:
                tally.unexpected += 1
                if len(tally.samples) < 10:
                    tally.samples.append(f"{kind.name}: expected {kind.expect}, got {code}: {detail}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# --------------------------------------------------------------------------------------------------
# the server process


def proc_status(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
        elif k == "Threads":
            out[k] = int(v)
    try:
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        out["fds"] = None
    return out


def server_counters(metrics_url: str | None) -> dict:
    """cnn_requests_total summed by (rpc, code), as the server counted them."""
    if not metrics_url:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "cnn_requests_total" and s.labels.get("rpc") in ("ModelInfer", "Classify") and s.value:
                key = f"{s.labels['rpc']} {s.labels['code']}"
                out[key] = out.get(key, 0) + s.value
            elif s.name == "cnn_nonfinite_inputs_total" and s.value:
                out["nonfinite_inputs"] = out.get("nonfinite_inputs", 0) + s.value
    return out


def export_checkpoint(checkpoint: Path, repo: Path, name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", "export", str(checkpoint), "--repository", str(repo), "--name", name],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench.soak: cnn export failed:\n{proc.stderr}")


# --------------------------------------------------------------------------------------------------
# environment and report


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def environment() -> dict:
    cpu = {}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Architecture", "CPU(s)", "Model name", "Thread(s) per core", "Hypervisor vendor"):
                cpu[k.strip()] = v.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    mem = 0
    try:
        mem = (
            int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
            * 1024
        )
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": cpu,
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_total_bytes": mem,
        "loadavg_at_start": list(os.getloadavg()),
        "versions": {d: _version(d) for d in ("cnn-stack", "onnxruntime", "grpcio", "protobuf", "numpy", "pillow")}
        | {"python": platform.python_version(), "kernel": platform.release(), "git_commit": commit},
    }


def markdown(result: dict) -> str:
    s, env, mem = result["summary"], result["environment"], result["memory"]
    v = env["versions"]
    lines = [
        f"# Soak: {s['requests']:,} requests against {result['settings']['model']}",
        "",
        f"**{'PASS' if result['pass'] else 'FAIL'}**: RSS growth {mem['growth_pct']:+.2f} % "
        f"(limit {result['settings']['max_growth_pct']} %), {s['unexpected']} unexpected answers.",
        "",
        "| what | value |",
        "|---|---|",
        f"| requests (after warm-up) | {s['requests']:,} in {s['wall_s']:.1f} s ({s['rps']:.0f}/s), concurrency {result['settings']['concurrency']} |",
        f"| latency p50 / p99 / max | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} / {s['max_ms']:.1f} ms |",
        f"| RSS after warm-up ({result['settings']['warmup']:,} requests) | {mem['rss_warm_bytes'] / 2**20:.1f} MiB |",
        f"| RSS at the end | {mem['rss_end_bytes'] / 2**20:.1f} MiB |",
        f"| RSS growth | {mem['growth_pct']:+.2f} % ({(mem['rss_end_bytes'] - mem['rss_warm_bytes']) / 2**20:+.1f} MiB) |",
        f"| RSS slope (least squares over the samples) | {mem['slope_kib_per_10k']:+.1f} KiB per 10,000 requests |",
        f"| peak RSS (VmHWM) | {mem['peak_bytes'] / 2**20:.1f} MiB |",
        f"| threads / open fds, warm -> end | {mem['threads'][0]} -> {mem['threads'][1]} / {mem['fds'][0]} -> {mem['fds'][1]} |",
        "",
        "## Traffic (status codes per kind)",
        "",
        "| kind | expected | answers |",
        "|---|---|---|",
    ]
    for k in result["traffic"]:
        lines.append(
            f"| {k['name']} | {k['expect']} | {', '.join(f'{c} {n:,}' for c, n in sorted(k['answers'].items()))} |"
        )
    if s["unexpected_samples"]:
        lines += ["", "Unexpected answers (first few):", ""] + [f"- {x}" for x in s["unexpected_samples"]]
    lines += ["", "## Server counters (cnn_requests_total, whole run)", ""]
    lines += [f"- {k}: {val:,.0f}" for k, val in sorted(result["server_counters"].items())]
    lines += ["", "## RSS samples", "", "| requests after warm-up | RSS MiB | threads | fds |", "|---|---|---|---|"]
    lines += [
        f"| {x['requests']:,} | {x['VmRSS'] / 2**20:.1f} | {x['Threads']} | {x['fds']} |" for x in result["samples"]
    ]
    cpu = env["cpu"]
    lines += [
        "",
        "## Environment",
        "",
        f"- CPU: {cpu.get('Model name', '?')} ({cpu.get('Architecture', '?')}), {env['cores_online']} cores online, "
        f"{env['cores_usable']} usable, hypervisor {cpu.get('Hypervisor vendor', 'none')}",
        f"- Memory: {env['memory_total_bytes'] / 2**30:.1f} GiB; load average at start "
        f"{', '.join(f'{x:.2f}' for x in env['loadavg_at_start'])} (a shared machine: other work runs beside it)",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- Client and server on the same machine; one client process, asyncio, closed loop.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# main


def soak(
    address: str,
    pid: int,
    metrics_url: str | None,
    model: str,
    *,
    requests: int,
    warmup: int,
    samples: int,
    concurrency: int,
    timeout_s: float,
    log=print,
) -> dict:
    kinds = traffic(model)
    schedule = [k for k in kinds for _ in range(k.weight)]
    random.Random(0).shuffle(schedule)
    latencies: list[float] = []
    tally = Tally()

    async def main() -> dict:
        opts = [("grpc.max_receive_message_length", 64 * 2**20), ("grpc.max_send_message_length", 64 * 2**20)]
        async with grpc.aio.insecure_channel(address, options=opts) as channel:
            await channel.channel_ready()
            log(f"warm-up: {warmup:,} requests")
            await run_chunk(channel, schedule, 0, warmup, concurrency, Tally(), [], timeout_s)
            points = [{"requests": 0, **proc_status(pid)}]
            log(f"  RSS after warm-up {points[0]['VmRSS'] / 2**20:.1f} MiB")
            t0 = time.perf_counter()
            done = 0
            for i in range(samples):
                n = requests // samples + (1 if i < requests % samples else 0)
                await run_chunk(channel, schedule, warmup + done, n, concurrency, tally, latencies, timeout_s)
                done += n
                points.append({"requests": done, **proc_status(pid)})
                log(
                    f"  {done:>9,} requests  {time.perf_counter() - t0:7.1f} s  RSS {points[-1]['VmRSS'] / 2**20:7.1f} MiB  "
                    f"threads {points[-1]['Threads']}  fds {points[-1]['fds']}  unexpected {tally.unexpected}"
                )
            wall = time.perf_counter() - t0
            live = await channel.unary_unary(SERVER_LIVE)(b"", timeout=10)  # empty ServerLiveRequest
            return {"points": points, "wall_s": wall, "live_bytes": len(live)}

    out = asyncio.run(main())
    points = out["points"]
    lat = np.asarray(latencies)
    warm, end = points[0], points[-1]
    x = np.array([p["requests"] for p in points], dtype=float)
    y = np.array([p["VmRSS"] for p in points], dtype=float)
    slope = float(np.polyfit(x, y, 1)[0]) if len(points) > 2 else float("nan")  # bytes per request
    return {
        "summary": {
            "requests": tally.sent,
            "ok": tally.ok,
            "unexpected": tally.unexpected,
            "unexpected_samples": tally.samples,
            "wall_s": out["wall_s"],
            "rps": tally.sent / out["wall_s"],
            "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "max_ms": float(lat.max() * 1e3),
        },
        "memory": {
            "rss_warm_bytes": warm["VmRSS"],
            "rss_end_bytes": end["VmRSS"],
            "growth_pct": (end["VmRSS"] - warm["VmRSS"]) / warm["VmRSS"] * 100,
            "slope_kib_per_10k": slope * 10_000 / 1024,
            "peak_bytes": end["VmHWM"],
            "threads": [warm["Threads"], end["Threads"]],
            "fds": [warm["fds"], end["fds"]],
        },
        "samples": points,
        "traffic": [
            {"name": k.name, "expect": k.expect, "weight": k.weight, "answers": tally.by_kind.get(k.name, {})}
            for k in kinds
        ],
        "server_counters": server_counters(metrics_url),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--repository", type=Path, help="model repository to serve (LeNet-5)")
    src.add_argument("--checkpoint", type=Path, help="a training checkpoint: exported into a scratch repository first")
    src.add_argument("--address", help="soak an already running server (needs --pid)")
    p.add_argument("--pid", type=int, help="with --address: the server's process id (for /proc)")
    p.add_argument("--metrics-url", help="with --address: its /metrics URL (optional)")
    p.add_argument("--model", default="", help="model name (default: the only model in the repository; lenet5-digits)")
    p.add_argument("--requests", type=int, default=100_000, help="requests after warm-up (default 100000)")
    p.add_argument(
        "--warmup", type=int, default=5_000, help="warm-up requests before the first RSS sample (default 5000)"
    )
    p.add_argument("--samples", type=int, default=20, help="RSS samples after warm-up (default 20)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline, seconds (default 30)")
    p.add_argument(
        "--max-growth-pct", type=float, default=10.0, help="RSS growth above this fails the run (default 10)"
    )
    p.add_argument("--out", type=Path, help="output folder (default runs/soak/<UTC time>)")
    args = p.parse_args(argv)
    if args.address and not args.pid:
        p.error("--address needs --pid (the server's resident memory is read from /proc/PID)")
    out = args.out or ROOT / "runs" / "soak" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    server = None
    scratch = None
    try:
        if args.address:
            address, pid, metrics_url, model = args.address, args.pid, args.metrics_url, args.model or "lenet5-digits"
        else:
            repo = args.repository
            if args.checkpoint:
                scratch = tempfile.TemporaryDirectory(prefix="soak-repo-")
                repo = Path(scratch.name)
                export_checkpoint(args.checkpoint, repo, args.model or "lenet5-digits")
            models = sorted(d.name for d in repo.iterdir() if d.is_dir() and not d.name.startswith("."))
            model = args.model or (models[0] if len(models) == 1 else "lenet5-digits")
            try:
                server = start_server(
                    repo,
                    "--poll-interval-s",
                    "0",
                    "--log-level",
                    "ERROR",
                    cwd=ROOT,
                    log_path=out / "server.log",
                    timeout_s=120,
                )
            except RuntimeError as e:
                raise SystemExit(f"bench.soak: {e}") from None
            address, pid, metrics_url = server.address, server.pid, server.metrics_url
        print(
            f"soak: {args.requests:,} requests (+{args.warmup:,} warm-up) against {model} at {address}, "
            f"concurrency {args.concurrency}; output {out}"
        )
        result = soak(
            address,
            pid,
            metrics_url,
            model,
            requests=args.requests,
            warmup=args.warmup,
            samples=args.samples,
            concurrency=args.concurrency,
            timeout_s=args.timeout,
        )
        alive = server is None or server.proc.poll() is None
    finally:
        rc = None
        if server is not None:
            rc = server.stop(60)
        if scratch is not None:
            scratch.cleanup()
    result["settings"] = {
        "model": model,
        "requests": args.requests,
        "warmup": args.warmup,
        "samples": args.samples,
        "concurrency": args.concurrency,
        "timeout_s": args.timeout,
        "max_growth_pct": args.max_growth_pct,
    }
    result["environment"] = env
    result["server_alive_at_end"] = alive
    result["server_exit_code"] = rc
    result["pass"] = bool(
        alive and result["summary"]["unexpected"] == 0 and result["memory"]["growth_pct"] <= args.max_growth_pct
    )
    (out / "soak.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    md = markdown(result)
    (out / "soak.md").write_text(md)
    print(md)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
