"""Render deploy/prometheus/prometheus.yml for a Prometheus outside docker-compose (tests, CI, a laptop).

The shipped config finds server replicas through compose's DNS (`server:8002`). Rendered, the
cnn-server job scrapes the given host:port targets instead, the self-scrape points at the given
address, intervals can be shortened, and alerts.yml is copied beside the result so `rule_files`
still resolves. Everything else (job names, metrics path, rule files) is the shipped config's.

    python deploy/prometheus/render.py --out DIR --server 127.0.0.1:8002 [--server ...] \
        [--self 127.0.0.1:9090] [--interval 1s]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SERVER_JOB = "cnn-server"
SELF_JOB = "prometheus"


def render(servers: list[str], self_address: str | None = None, interval: str | None = None,
           source: Path = HERE / "prometheus.yml") -> dict:
    cfg = yaml.safe_load(source.read_text())
    if interval:
        cfg["global"]["scrape_interval"] = interval
        cfg["global"]["evaluation_interval"] = interval
        cfg["global"]["scrape_timeout"] = interval
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    if SERVER_JOB not in jobs:
        raise SystemExit(f"render: {source} has no '{SERVER_JOB}' job")
    server = jobs[SERVER_JOB]
    for key in [k for k in server if k.endswith("_sd_configs")]:
        del server[key]
    server["static_configs"] = [{"targets": list(servers)}]
    if self_address and SELF_JOB in jobs:
        jobs[SELF_JOB]["static_configs"] = [{"targets": [self_address]}]
    return cfg


def write(out: Path, servers: list[str], self_address: str | None = None, interval: str | None = None) -> Path:
    """Write prometheus.yml and its rule files into `out`; returns the config's path."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = render(servers, self_address, interval)
    for rule_file in cfg.get("rule_files", []):
        shutil.copy(HERE / rule_file, out / Path(rule_file).name)
    cfg["rule_files"] = [Path(r).name for r in cfg.get("rule_files", [])]
    path = out / "prometheus.yml"
    path.write_text("# Rendered from deploy/prometheus/prometheus.yml by deploy/prometheus/render.py\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for prometheus.yml and the rule files")
    p.add_argument("--server", action="append", required=True, help="host:port of a server's /metrics (repeatable)")
    p.add_argument("--self", dest="self_address", help="host:port Prometheus itself listens on")
    p.add_argument("--interval", help="scrape and evaluation interval, e.g. 1s")
    a = p.parse_args(argv)
    print(write(a.out, a.server, a.self_address, a.interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
