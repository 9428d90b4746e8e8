"""Before/after in one run: the same load against two server trees, interleaved.

    python -m bench ab --b /tmp/benchcopy [--a .] [--repo REPO] [--rows 1] [--concurrency 1,64] [--rounds 5]

Both servers run at once on the same repository (idle between their turns); each round measures A then
B (then B then A on the next round, to cancel drift) at every concurrency. Reported: medians over rounds
of requests/s, p50, p99 and the server's CPU time per request (user + system, all threads), which is the
steadiest number on a shared machine. Writes ab.json and ab.md into --out.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench import models, procs, report
from bench.env import describe, markdown
from bench.loadgen import model_infer_request, run_load


def run_ab(
    a_root: Path,
    b_root: Path,
    repo: Path,
    out: Path,
    *,
    concurrency: list[int],
    rounds: int = 5,
    duration_s: float = 3.0,
    warmup_s: float = 0.5,
    rows: int = 1,
    processes: int | None = None,
    env_a: dict | None = None,
    env_b: dict | None = None,
    log=print,
) -> dict:
    name = models.model_name(repo)
    payload = model_infer_request(name, rows)
    logs = out / "logs"
    servers = {}
    res: dict[str, dict[int, list[dict]]] = {"A": {}, "B": {}}
    try:
        servers["A"] = procs.start_server(repo, logs, server_root=a_root, env=env_a, name="A")
        servers["B"] = procs.start_server(repo, logs, server_root=b_root, env=env_b, name="B")
        for r in range(rounds):
            for c in concurrency:
                for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    s = servers[label]
                    c0 = s.cpu_s()
                    lr = run_load(
                        s.address,
                        payload,
                        c,
                        duration_s=duration_s,
                        warmup_s=warmup_s,
                        processes=processes,
                        rows_per_request=rows,
                    )
                    d = lr.summary()
                    d["cpu_us"] = (s.cpu_s() - c0) / lr.total_ok * 1e6 if lr.total_ok else float("nan")
                    res[label].setdefault(c, []).append(d)
                log(
                    f"  round {r + 1}/{rounds} c={c}: A {res['A'][c][-1]['rps']:.0f}/s {res['A'][c][-1]['cpu_us']:.0f} µs, "
                    f"B {res['B'][c][-1]['rps']:.0f}/s {res['B'][c][-1]['cpu_us']:.0f} µs"
                )
    finally:
        for s in servers.values():
            s.stop()
    rows_out = []
    for c in concurrency:
        row = {"concurrency": c}
        for label in ("A", "B"):
            pts = res[label][c]
            for k in ("rps", "p50_ms", "p99_ms", "cpu_us"):
                row[f"{label}_{k}"] = statistics.median(p[k] for p in pts)
        row["rps_B/A"] = row["B_rps"] / row["A_rps"] if row["A_rps"] else float("nan")
        row["cpu_B/A"] = row["B_cpu_us"] / row["A_cpu_us"] if row["A_cpu_us"] else float("nan")
        rows_out.append(row)
    env = describe(
        {
            "a": str(a_root),
            "b": str(b_root),
            "repo": str(repo),
            "rounds": rounds,
            "duration_s": duration_s,
            "rows_per_request": rows,
            "env_a": " ".join(f"{k}={v}" for k, v in (env_a or {}).items()) or "-",
            "env_b": " ".join(f"{k}={v}" for k, v in (env_b or {}).items()) or "-",
        }
    )
    result = {"env": env, "rows": rows_out, "raw": res}
    cols = [
        ("concurrency", "conc"),
        ("A_rps", "A req/s"),
        ("B_rps", "B req/s"),
        ("rps_B/A", "B/A req/s"),
        ("A_p50_ms", "A p50 ms"),
        ("B_p50_ms", "B p50 ms"),
        ("A_p99_ms", "A p99 ms"),
        ("B_p99_ms", "B p99 ms"),
        ("A_cpu_us", "A CPU µs/req"),
        ("B_cpu_us", "B CPU µs/req"),
        ("cpu_B/A", "B/A CPU"),
    ]
    md = (
        f"# A/B: `{a_root}` (A) vs `{b_root}` (B), model {name}, {rows} row(s)/request\n\n{markdown(env)}\n\n"
        f"Medians of {rounds} interleaved rounds of {duration_s:g} s.\n\n" + report.table(rows_out, cols) + "\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab.json").write_text(json.dumps(result, indent=2, default=report._default) + "\n")
    (out / "ab.md").write_text(md)
    return result
