"""The server's own per-request cost without gRPC: the ModelInfer handler called in-process.

    python -m bench.inproc [--repo REPO] [--concurrency 1,64] [--requests 20000] [--rows 1] [--deadline]
                           [--path grpc|core] [--loop uvloop|asyncio] [--profile FILE]

Builds the real ModelRegistry, InferenceService and InferenceServicer (whatever tree is first on
PYTHONPATH: point it at a scratch copy to measure a change), then awaits `ModelInfer(request, context)`
with a stand-in context, `concurrency` calls in flight at a time. Reported: CPU µs and wall µs per
request (process CPU includes the onnxruntime thread). No sockets and no other process are involved,
so on a shared machine this is the steadiest before/after number for the Python hot path (protobuf
decode/encode, validation, batcher, thread hop, metrics). Run from a scratch tree with
`PYTHONPATH=TREE python -m bench.inproc`.

`--path core` calls the core's entry point for the common request (`InferenceService.infer_raw` on a
RawInferRequest, what both adapters call for a raw tensor) instead of the gRPC servicer: the cost of
the core alone, batcher, thread hop, telemetry and statistics included. `--profile FILE` runs the
measured phase under cProfile and writes the 40 functions with the most own time to FILE.

`--telemetry ab` builds two services in this process, prediction telemetry off (A) and on (B), and
alternates their rounds (A B, B A, ...): the median of the per-round B/A ratios of CPU per request is the
telemetry's cost with the least noise this machine allows (issue 21's target: <= 2 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path


class _Context:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self):
        return self.remaining

    async def abort(self, code, details):
        raise RuntimeError(f"abort {code}: {details}")


async def _round(service, servicer, c: int, requests: int, path: str, raw, wire: bytes, ctx, prof) -> dict:
    """`requests` calls, `c` in flight (after a short warm-up): CPU and wall µs per request."""
    from protos.inference import grpc_service_pb2 as pb

    left = requests

    def no_decode():
        raise AssertionError("the benchmark's request must take the raw path")

    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            if path == "core":
                await service.infer_raw(raw, no_decode)
                continue
            r = pb.ModelInferRequest.FromString(wire)  # as gRPC hands it over
            resp = await servicer.ModelInfer(r, ctx)
            resp.SerializeToString()

    await asyncio.gather(*(worker() for _ in range(min(c, 8))))  # warm-up
    left = requests
    if prof is not None:
        prof.enable()
    c0, w0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    c1, w1 = time.process_time(), time.perf_counter()
    if prof is not None:
        prof.disable()
    return {"cpu_us": (c1 - c0) / requests * 1e6, "wall_us": (w1 - w0) / requests * 1e6}


async def _measure(
    repo: Path,
    concurrency: list[int],
    requests: int,
    rows: int,
    deadline: bool,
    rounds: int,
    path: str = "grpc",
    profile: Path | None = None,
    telemetry: str = "on",
) -> dict:
    import numpy as np

    from protos.inference import grpc_service_pb2 as pb
    from server.core.registry import ModelRegistry
    from server.core.service import InferenceService
    from server.core.types import RawInferRequest
    from server.grpc.inference import InferenceServicer
    from server.metrics import Metrics

    arms = {}  # arm -> (service, servicer): one, or telemetry off and on side by side ("ab")
    for arm in ("off", "on") if telemetry == "ab" else (telemetry,):
        metrics = Metrics(prediction_telemetry=arm == "on")
        service = InferenceService(ModelRegistry(repo, metrics, poll_interval_s=0), metrics)
        await service.start()
        arms[arm] = (service, InferenceServicer(service, metrics))
    name = service.list_models()[0].name
    x = np.random.default_rng(0).standard_normal((rows, 1, 28, 28)).astype("<f4")
    req = pb.ModelInferRequest(model_name=name)
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    wire = req.SerializeToString()
    ctx = _Context(60.0 if deadline else None)
    raw = RawInferRequest(name, "", "", "input", "FP32", tuple(x.shape), x.tobytes(), None)

    prof = None
    if profile is not None:
        import cProfile

        prof = cProfile.Profile()
    out = {}
    try:
        for c in concurrency:
            per: dict[str, list[dict]] = {arm: [] for arm in arms}
            for i in range(rounds):
                for arm in list(arms) if i % 2 == 0 else list(arms)[::-1]:  # ABBA order: drift cancels
                    service, servicer = arms[arm]
                    per[arm].append(await _round(service, servicer, c, requests, path, raw, wire, ctx, prof))
            res = {
                arm: {
                    "cpu_us": statistics.median(p["cpu_us"] for p in rs),
                    "wall_us": statistics.median(p["wall_us"] for p in rs),
                    "rounds": rs,
                }
                for arm, rs in per.items()
            }
            if telemetry != "ab":
                out[c] = res[telemetry]
                continue
            ratios = [b["cpu_us"] / a["cpu_us"] for a, b in zip(per["off"], per["on"])]  # pairs of one round
            out[c] = {**res, "on_over_off_cpu": statistics.median(ratios), "ratios": ratios}
    finally:
        for service, _ in arms.values():
            await service.close()
    if prof is not None and profile is not None:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(40)
        profile.write_text(buf.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--repo", type=Path, default=Path(__file__).resolve().parent.parent / "runs/bench/models/repo-lenet5"
    )
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--deadline", action="store_true", help="calls carry a 60 s gRPC deadline (as most clients set)")
    p.add_argument(
        "--path",
        choices=("grpc", "core"),
        default="grpc",
        help="grpc: the ModelInfer servicer (protobuf in and out); core: InferenceService.infer_raw alone",
    )
    p.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (the server's default: uvloop)"
    )
    p.add_argument("--profile", type=Path, help="cProfile the measured phase; the top 40 by own time go to this file")
    p.add_argument(
        "--telemetry",
        choices=("on", "off", "ab"),
        default="on",
        help="prediction telemetry on (the default), off, or ab: both services in this process, rounds "
        "alternated ABBA, with the median of the per-round ratios (its cost, issue 21)",
    )
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    import logging

    logging.basicConfig(level="WARNING")
    import server
    from server.eventloop import run_loop

    res = run_loop(
        _measure(
            a.repo,
            [int(c) for c in a.concurrency.split(",")],
            a.requests,
            a.rows,
            a.deadline,
            a.rounds,
            a.path,
            a.profile,
            a.telemetry,
        ),
        a.loop,
    )

    if a.json:
        print(json.dumps({"server": server.__file__, "results": res}))
    else:
        print(f"server tree: {Path(server.__file__).parent.parent}")
        for c, r in res.items():
            if a.telemetry == "ab":
                for arm in ("off", "on"):
                    rounds = ", ".join(f"{x['cpu_us']:.1f}" for x in r[arm]["rounds"])
                    print(
                        f"concurrency {c:4d}, telemetry {arm:3s}: {r[arm]['cpu_us']:8.1f} CPU µs/req  "
                        f"{r[arm]['wall_us']:8.1f} wall µs/req  (rounds: {rounds})"
                    )
                ratios = ", ".join(f"{x:.3f}" for x in r["ratios"])
                print(
                    f"concurrency {c:4d}: on/off CPU per request, median of the rounds' ratios "
                    f"{r['on_over_off_cpu']:.3f} ({ratios})"
                )
                continue
            rounds = ", ".join(f"{x['cpu_us']:.1f}" for x in r["rounds"])
            print(
                f"concurrency {c:4d}: {r['cpu_us']:8.1f} CPU µs/req  {r['wall_us']:8.1f} wall µs/req  (rounds: {rounds})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
