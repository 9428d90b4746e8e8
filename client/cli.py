"""The `cnn` command line: train, inspect, export, models, serve, classify.

Subcommands are registered without importing torch; each one imports what it needs when it runs, so
`cnn serve` and `cnn classify` work on the serving install alone.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from client.classify import add_classify_parser
    from server.cli import add_serve_parser

    parser = argparse.ArgumentParser(prog="cnn", description="Train classic CNNs, export verified ONNX, serve over gRPC.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from export.cli import add_export_parser, add_models_parser
    from training.cli import add_inspect_parser, add_train_parser

    add_train_parser(sub)
    add_inspect_parser(sub)
    add_export_parser(sub)
    add_models_parser(sub)
    add_serve_parser(sub)
    add_classify_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as e:
        if e.name in ("torch", "onnx", "onnxscript", "sklearn", "matplotlib"):
            print(f"cnn {args.command}: needs the training extra ({e.name} is missing): pip install -e '.[train]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
