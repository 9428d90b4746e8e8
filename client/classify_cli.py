"""`cnn classify IMAGE...`: send image files to a running server's Classification service.

What a user sees when something is wrong, and the exit code:
    - a usage mistake (bad flag value, --tls-cert without --tls-key, an unreadable TLS file, a model or
      version the server does not have, several models on the server and no --model): one line naming
      the flag, exit 2;
    - no connection: within --connect-timeout-s (default 5 s; at once when nothing listens) one line naming
      the address and why (nothing listening, TLS on one side only, certificate refused; client/diagnose.py),
      exit 1; gRPC's own core log lines are off (GRPC_VERBOSITY=NONE, set by client/cli.py before grpc loads;
      set GRPC_VERBOSITY=debug to see them);
    - an image file that cannot be read, or that the server cannot decode: one line naming the file; the other
      images are still classified, and the exit code is 1.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

DEFAULT_SERVER = "127.0.0.1:8001"
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
PROG = "cnn classify"

_IMAGE_FIELD = re.compile(r"^images\[(\d+)\](?:\.\w+)?:\s*")
_FIELD_FLAGS = {
    "'model_name'": "--model",
    "model_name:": "--model:",
    "'model_version'": "--version",
    "model_version:": "--version:",
}


class UsageError(Exception):
    """A mistake in the command line; printed as one line, exit 2."""


def add_classify_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify image files with a running server",
        description="Send PNG/JPEG files to the server's Classification service; one line (or one JSON object with "
        "--json) per image.",
        epilog="Exit codes: 0 every image classified; 1 no connection, a failed call, or some images could not be "
        "read or decoded (each is named, the others are still classified); 2 a usage error.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument(
        "--server",
        default=os.environ.get("CNN_SERVER") or DEFAULT_SERVER,
        metavar="HOST:PORT",
        help=f"gRPC address of the server (default: $CNN_SERVER, else {DEFAULT_SERVER})",
    )
    p.add_argument("--model", default="", help="model name (default: the server's default model, or its only one)")
    p.add_argument("--version", default="", help="model version (default: the newest ready one)")
    p.add_argument("--top-k", type=int, default=3, help="how many labels per image (default 3)")
    p.add_argument("--batch-size", type=int, default=64, help="images per request (default 64)")
    p.add_argument(
        "--timeout-s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"deadline of each request in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--connect-timeout-s",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        help=f"how long to wait for a connection before saying why there is none (default "
        f"{DEFAULT_CONNECT_TIMEOUT_S:g}; a refused connection fails at once)",
    )
    p.add_argument("--tls-ca", metavar="PEM", help="use TLS, trusting this CA (PEM file)")
    p.add_argument("--tls-cert", metavar="PEM", help="client certificate for mTLS (needs --tls-key)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--token", default=os.environ.get("CNN_TOKEN", ""), help="bearer token (default: $CNN_TOKEN)")
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per image: {"image", "model", "version", "top_k": [{"label", "index", "probability"}]}',
    )
    p.set_defaults(func=run_classify)


def _check_flags(args) -> None:
    if args.top_k < 1:
        raise UsageError("--top-k must be at least 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not args.timeout_s > 0 or not args.connect_timeout_s > 0:
        raise UsageError("--timeout-s and --connect-timeout-s must be positive")
    if bool(args.tls_cert) != bool(args.tls_key):
        given, missing = ("--tls-cert", "--tls-key") if args.tls_cert else ("--tls-key", "--tls-cert")
        raise UsageError(
            f"{given} needs {missing} too (a client certificate and its private key go together, for mTLS)"
        )


def _tls_files(args) -> tuple[dict[str, bytes], dict[str, str]]:
    from client.diagnose import check_key_pair

    data, names = {}, {}
    for key, path in (("tls_ca", args.tls_ca), ("tls_cert", args.tls_cert), ("tls_key", args.tls_key)):
        if path:
            try:
                data[key] = Path(path).read_bytes()
            except OSError as e:
                raise UsageError(f"cannot read --{key.replace('_', '-')} {path}: {e.strerror}") from None
            names[key] = path
    if "tls_cert" in data:
        why = check_key_pair(data["tls_cert"], data["tls_key"], args.tls_cert, args.tls_key)
        if why:
            raise UsageError(why)
    return data, names


def _flag_words(details: str) -> str:
    """The server's protocol field names, as the flags a user types."""
    for field, flag in _FIELD_FLAGS.items():
        details = details.replace(field, flag)
    return details


def _usage_from_status(e, args) -> str | None:
    """A refusal caused by a flag, said in terms of the flag; None if it is not one."""
    import grpc

    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT and "'model_name' is empty" in details:
        m = re.search(r"several models \(([^)]*)\)", details)
        if m:
            return (
                f"the server at {args.server} serves several models ({m.group(1)}): choose one with --model NAME "
                f"(or start the server with --default-model NAME)"
            )
        return f"the server at {args.server} has no ready model to default to: name one with --model NAME"
    if code == grpc.StatusCode.NOT_FOUND and ("model_name" in details or "model_version" in details):
        return f"{args.server}: {_flag_words(details)}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return (
            f"the server at {args.server} refused the call ({details}): pass --token TOKEN or set $CNN_TOKEN"
            if args.token
            else f"the server at {args.server} needs a bearer token for inference calls: "
            f"pass --token TOKEN or set $CNN_TOKEN"
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"the server at {args.server} refused the token: {details}"
    return None


def _runtime_message(e, args, client) -> str:
    import grpc

    from client.diagnose import diagnose

    code, details = e.code(), e.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        why = diagnose(args.server, **client._tls)
        if why:
            return why
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {args.server} within --timeout-s {args.timeout_s:g} s"
    return f"{args.server}: {code.name}: {_flag_words(details)}"


def _classify_chunk(client, items: list[tuple[Path, bytes]], args, failed: list[str]):
    """Classify `items`; an image the server cannot decode is reported by its path and left out, the rest are
    sent again. Yields (path, predictions)."""
    import grpc

    pending = list(items)
    while pending:
        try:
            results = client.classify([b for _, b in pending], top_k=args.top_k, model=args.model, version=args.version)
        except grpc.RpcError as e:
            m = _IMAGE_FIELD.match(e.details() or "")
            if (
                e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
                and m
                and int(m.group(1)) < len(pending)
            ):
                path, _ = pending.pop(int(m.group(1)))
                failed.append(str(path))
                print(f"{PROG}: {path}: {(e.details() or '')[m.end() :]}", file=sys.stderr)
                continue
            raise
        yield from zip((p for p, _ in pending), results)
        return


def run_classify(args) -> int:
    try:
        _check_flags(args)
        tls, names = _tls_files(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    import grpc

    from client.classify import ClassificationClient, ConnectError

    failed: list[str] = []
    items: list[tuple[Path, bytes]] = []
    for name in args.images:
        path = Path(name)
        try:
            items.append((path, path.read_bytes()))
        except OSError as e:
            failed.append(name)
            print(f"{PROG}: {path}: cannot read: {e.strerror}", file=sys.stderr)
    if not items:
        print(f"{PROG}: error: no image could be read ({len(failed)} named)", file=sys.stderr)
        return 2  # nothing to send: a usage error, like a bad flag
    with ClassificationClient(args.server, timeout_s=args.timeout_s, token=args.token, tls_names=names, **tls) as c:
        try:
            c.wait_ready(args.connect_timeout_s)
            for start in range(0, len(items), args.batch_size):
                for path, preds in _classify_chunk(c, items[start : start + args.batch_size], args, failed):
                    if args.json:
                        print(
                            json.dumps(
                                {
                                    "image": str(path),
                                    "model": c.last_model[0],
                                    "version": c.last_model[1],
                                    "top_k": [
                                        {"label": p.label, "index": p.index, "probability": round(p.probability, 6)}
                                        for p in preds
                                    ],
                                }
                            ),
                            flush=True,
                        )
                    else:
                        print(f"{path}: " + ", ".join(f"{p.label} ({p.probability:.3f})" for p in preds), flush=True)
        except ConnectError as e:
            print(f"{PROG}: {e}", file=sys.stderr)
            return 1
        except grpc.RpcError as e:
            usage = _usage_from_status(e, args)
            print(f"{PROG}: error: {usage}" if usage else f"{PROG}: {_runtime_message(e, args, c)}", file=sys.stderr)
            return 2 if usage else 1
    if failed:
        print(f"{PROG}: {len(failed)} of {len(args.images)} images failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
