"""Is the quantised variant faster than fp32 where it will run? A short interleaved timing on onnxruntime.

`compare_speed(fp32, variant, input_shape, batch)` runs both models on the same random batch, alternating,
on one intra-op thread (the repository's default `intra_op_threads: 1`), and returns the medians. `cnn export
--quantize` records the result in the version's metadata (`quantization.speed`) and warns when the variant
measured slower than fp32: fp16 on a CPU provider usually is (onnxruntime casts around most fp16 kernels).
Timing is noisy on a shared machine; the warning quotes both medians so a reader can judge.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np


def compare_speed(
    fp32_path: str | os.PathLike,
    variant_path: str | os.PathLike,
    input_shape: list[int],
    batch: int,
    *,
    provider: str = "CPUExecutionProvider",
    repeats: int = 9,
    warmup: int = 2,
    budget_s: float = 10.0,
) -> dict[str, Any]:
    """{'provider', 'batch', 'repeats', 'fp32_ms', 'variant_ms', 'ratio'} (ratio = variant / fp32; > 1 is slower).
    Stops early (fewer repeats) once `budget_s` is spent, so a large model does not hold an export up."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    sessions = [
        ort.InferenceSession(str(p), sess_options=opts, providers=[provider]) for p in (fp32_path, variant_path)
    ]
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for _ in range(warmup):
        for s, f in zip(sessions, feeds):
            s.run(None, f)
    times: list[list[float]] = [[], []]
    t_end = time.perf_counter() + budget_s
    for _ in range(repeats):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[i].append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() > t_end:
            break
    fp32_ms, variant_ms = statistics.median(times[0]), statistics.median(times[1])
    return {
        "provider": provider,
        "batch": batch,
        "repeats": len(times[0]),
        "fp32_ms": round(fp32_ms, 3),
        "variant_ms": round(variant_ms, 3),
        "ratio": round(variant_ms / fp32_ms, 3) if fp32_ms > 0 else None,
    }


def slower_warning(precision: str, speed: dict[str, Any]) -> str:
    """A warning when the variant measured slower than fp32, else ''."""
    if not speed.get("ratio") or speed["ratio"] <= 1.0:
        return ""
    hint = " (fp16 is meant for GPU providers; on a CPU serve the fp32 model)" if precision == "fp16" else ""
    return (
        f"{precision} measured slower than fp32 on {speed['provider']}: {speed['variant_ms']:.2f} vs "
        f"{speed['fp32_ms']:.2f} ms per batch of {speed['batch']} (median of {speed['repeats']}, 1 thread){hint}"
    )
