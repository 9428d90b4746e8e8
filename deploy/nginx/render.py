"""Render nginx.conf.template: `python deploy/nginx/render.py --listen 127.0.0.1:8000 --workdir DIR 127.0.0.1:8011 127.0.0.1:8012`."""

from __future__ import annotations

import argparse
from pathlib import Path

TEMPLATE = Path(__file__).with_name("nginx.conf.template")


HTTP_BLOCK = """
    # HTTP (the REST binding, /v1 images, the page): per-request balancing over keep-alive connections;
    # a request that fails to connect or times out is retried on the next replica (inference is idempotent).
    upstream cnn_http {
{http_upstreams}
        keepalive 32;
    }

    server {
        listen {http_listen};
        client_max_body_size 16m;

        location / {
            proxy_pass http://cnn_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout non_idempotent http_503;
            proxy_next_upstream_tries 0;
            proxy_next_upstream_timeout 10s;
            proxy_connect_timeout 1s;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
        }
    }
"""


def render(listen: str, workdir: str | Path, replicas: list[str], max_fails: int = 1, fail_timeout_s: int = 5,
           http_listen: str = "", http_replicas: list[str] | None = None) -> str:
    """The gRPC balancer; with `http_listen` and `http_replicas` (the servers' --http-address) also the HTTP one."""
    def servers(addresses: list[str]) -> str:
        return "\n".join(f"        server {r} max_fails={max_fails} fail_timeout={fail_timeout_s}s;" for r in addresses)

    http = ""
    if http_listen and http_replicas:
        http = HTTP_BLOCK.replace("{http_upstreams}", servers(http_replicas)).replace("{http_listen}", http_listen)
    text = TEMPLATE.read_text()
    for key, value in (("{workdir}", str(workdir)), ("{upstreams}", servers(replicas)), ("{listen}", listen),
                       ("{http}", http)):
        text = text.replace(key, value)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", default="127.0.0.1:8000")
    ap.add_argument("--workdir", required=True, help="pid file, logs and temp folders")
    ap.add_argument("replicas", nargs="+", help="host:port of each server replica")
    ap.add_argument("--http-listen", default="", help="also balance HTTP here (e.g. 127.0.0.1:8010)")
    ap.add_argument("--http-replica", action="append", default=[], help="host:port of a replica's HTTP (repeat)")
    args = ap.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    print(render(args.listen, args.workdir, args.replicas, http_listen=args.http_listen, http_replicas=args.http_replica))


if __name__ == "__main__":
    main()
