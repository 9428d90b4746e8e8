"""The prediction telemetry's own cost per answer (issue 21): one-row LeNet-5-shaped answers through the
core's tap (`InferenceService._record_predictions`: the deque append) and their share of the bulk count
(`ModelPredictions.flush`: concatenate, softmax, argmax, bincounts), no server around it.

    python -m bench.telemetry_tap [--answers 200000] [--rounds 7] [--classes 10]

Prints CPU µs per answer for each round and their median. Pin it (`taskset -c 0`) on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from server.core.service import InferenceService
from server.predictions import LOGITS, ModelPredictions


def per_answer_us(answers: int, classes: int) -> float:
    """CPU µs per one-row answer, the bulk counting of all of them included."""
    tap = ModelPredictions([str(i) for i in range(classes)], LOGITS, None, 0.5, 32)
    out = {LOGITS: np.random.default_rng(0).standard_normal((1, classes)).astype(np.float32)}
    t0 = time.process_time()
    for _ in range(answers):
        InferenceService._record_predictions(tap, out, None)
    tap.flush()
    return (time.process_time() - t0) / answers * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.telemetry_tap", description=__doc__.split("\n\n")[0])
    p.add_argument("--answers", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--classes", type=int, default=10)
    a = p.parse_args(argv)
    runs = [per_answer_us(a.answers, a.classes) for _ in range(a.rounds)]
    print(f"CPU µs per answer: {', '.join(f'{x:.2f}' for x in runs)}; median {statistics.median(runs):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
