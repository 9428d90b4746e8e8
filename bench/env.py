"""What a result was measured on: hardware, load, versions, settings."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _meminfo() -> dict:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            k, v = line.split(":", 1)
            if k in ("MemTotal", "MemAvailable"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def describe(settings: dict | None = None) -> dict:
    lscpu = _run(["lscpu"])
    keep = (
        "Architecture",
        "CPU(s)",
        "Model name",
        "Thread(s) per core",
        "Core(s) per socket",
        "Socket(s)",
        "Hypervisor vendor",
        "L2 cache",
        "L3 cache",
        "CPU max MHz",
    )
    cpu = {}
    for line in lscpu.splitlines():
        k, _, v = line.partition(":")
        if k.strip() in keep:
            cpu[k.strip()] = v.strip()
    mem = _meminfo()
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "hardware": {
            "lscpu": cpu,
            "cores_online": os.cpu_count(),
            "cores_usable": affinity,
            "memory_total_bytes": mem.get("MemTotal"),
            "memory_available_bytes": mem.get("MemAvailable"),
            "loadavg_at_start": list(os.getloadavg()),
        },
        "versions": {
            "python": platform.python_version(),
            "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
            "grpcio": _version("grpcio"),
            "protobuf": _version("protobuf"),
            "numpy": _version("numpy"),
            "cnn-stack": _version("cnn-stack"),
            "git_commit": commit + ("-dirty" if dirty else ""),
            "kernel": platform.release(),
        },
        "settings": settings or {},
    }


def markdown(env: dict) -> str:
    hw, v = env["hardware"], env["versions"]
    cpu = hw["lscpu"]
    mem = hw.get("memory_total_bytes") or 0
    lines = [
        f"- CPU: {cpu.get('Model name', '?')} ({cpu.get('Architecture', '?')}), {hw['cores_online']} cores online, "
        f"{hw['cores_usable']} usable, {cpu.get('Thread(s) per core', '?')} thread(s)/core, "
        f"hypervisor {cpu.get('Hypervisor vendor', 'none')}",
        f"- Memory: {mem / 2**30:.1f} GiB total; load average at start {', '.join(f'{x:.2f}' for x in hw['loadavg_at_start'])}",
        f"- Versions: python {v['python']}, onnxruntime {v['onnxruntime']}, grpcio {v['grpcio']}, protobuf {v['protobuf']}, "
        f"numpy {v['numpy']}, cnn-stack {v['cnn-stack']} (git {v['git_commit']}), kernel {v['kernel']}",
        "- Settings: "
        + ", ".join(f"{k}={val}" for k, val in env["settings"].items() if not isinstance(val, (dict, list))),
    ]
    return "\n".join(lines)
