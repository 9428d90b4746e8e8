"""Render nginx.conf.template: `python deploy/nginx/render.py --listen 127.0.0.1:8000 --workdir DIR 127.0.0.1:8011 127.0.0.1:8012`."""

from __future__ import annotations

import argparse
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")


def render(listen: str, workdir: str | Path, replicas: list[str], max_fails: int = 1, fail_timeout_s: int = 5) -> str:
    ups = "\n".join(f"        server {r} max_fails={max_fails} fail_timeout={fail_timeout_s}s;" for r in replicas)
    text = TEMPLATE.read_text()
    for key, value in (("{workdir}", str(workdir)), ("{upstreams}", ups), ("{listen}", listen)):
        text = text.replace(key, value)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", default="127.0.0.1:8000")
    ap.add_argument("--workdir", required=True, help="pid file, logs and temp folders")
    ap.add_argument("replicas", nargs="+", help="host:port of each server replica")
    args = ap.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    print(render(args.listen, args.workdir, args.replicas))


if __name__ == "__main__":
    main()
