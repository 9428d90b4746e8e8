"""HTTP load from a separate process: Debian's `wrk` (C, one thread, keep-alive connections), driven here.

One load generator for every HTTP figure in this project (the bare-library references in bench/http_bare.py,
the server's binary and JSON infer, MLServer's REST endpoint), so they compare like with like. `wrk` spends
far less CPU per request than a Python client would, which matters on a small shared machine.

    run_wrk("http://127.0.0.1:8000/v2/models/m/infer", body, headers, concurrency=64, duration_s=5)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

_LUA = """
local f = io.open(os.getenv("WRK_BODY_FILE"), "rb")
wrk.method = os.getenv("WRK_METHOD") or "POST"
wrk.body = f:read("*all")
f:close()
{headers}
local errors_seen = 0
response = function(status, headers, body)
  if status ~= 200 and errors_seen < 1 then
    errors_seen = errors_seen + 1
    io.stderr:write("non-200 answer " .. status .. ": " .. string.sub(body, 1, 200) .. "\\n")
  end
end
"""

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class WrkResult:
    url: str
    concurrency: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    output: str

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("output")
        return d


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot read wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk; scripts/setup.sh --system does it)")
    return path


def run_wrk(
    url: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    concurrency: int = 64,
    duration_s: float = 5.0,
    method: str = "POST",
    threads: int = 1,
    timeout_s: float = 10.0,
) -> WrkResult:
    """`wrk -t THREADS -c CONCURRENCY -d DURATION --latency` sending `body` on every request."""
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
    with tempfile.TemporaryDirectory(prefix="cnn-wrk-") as tmp:
        body_file = os.path.join(tmp, "body.bin")
        with open(body_file, "wb") as f:
            f.write(body)
        script = os.path.join(tmp, "req.lua")
        with open(script, "w") as f:
            f.write(_LUA.replace("{headers}", "\n".join(lines)))
        env = dict(os.environ, WRK_BODY_FILE=body_file, WRK_METHOD=method)
        pin = os.environ.get("BENCH_CLIENT_CPUS", "")  # `--client-cpus`: the load generator on its own core(s)
        seconds = max(1, round(duration_s))  # wrk takes whole seconds
        cmd = (["taskset", "-c", pin] if pin else []) + [
            wrk_path(),
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{seconds}s",
            "--timeout",
            f"{timeout_s:g}s",
            "--latency",
            "-s",
            script,
            url,
        ]
        p = subprocess.run(
            cmd, check=False, env=env, capture_output=True, text=True, timeout=duration_s + timeout_s + 30
        )
    out = p.stdout + p.stderr
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {out}")
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+\w+)", out, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+([\d.]+\w+)", out, re.MULTILINE)
    if not (m and rps and p50 and p99):
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        url=url,
        concurrency=concurrency,
        duration_s=_seconds(m.group(2)),
        requests=int(m.group(1)),
        rps=float(rps.group(1)),
        p50_ms=_seconds(p50.group(1)) * 1e3,
        p99_ms=_seconds(p99.group(1)) * 1e3,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(map(int, sock.groups())) if sock else 0,
        output=out,
    )
