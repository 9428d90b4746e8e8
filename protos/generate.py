"""Regenerate the Python stubs from the .proto files: `python -m protos.generate` (or `--check`).

The stubs are committed so that a serving install needs no grpcio-tools; CI runs `--check` to prove
they are in sync with the .proto sources.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root: proto import paths start at protos/
PROTOS = sorted(p.relative_to(ROOT) for p in (ROOT / "protos").rglob("*.proto"))
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out: Path) -> None:
    from grpc_tools import protoc  # dev dependency

    args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    args += [str(p) for p in PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def _generated(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / "protos").rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="fail if the committed stubs differ from fresh ones")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _generate(tmp)
        fresh = _generated(tmp)
        if args.check:
            committed = _generated(ROOT)
            stale = [
                str(p) for p in fresh if not (ROOT / p).exists() or not filecmp.cmp(tmp / p, ROOT / p, shallow=False)
            ]
            stale += [f"{p} (no longer generated)" for p in committed if p not in fresh]
            if stale:
                print(
                    "protobuf stubs are out of date; run `python -m protos.generate`:\n  " + "\n  ".join(stale),
                    file=sys.stderr,
                )
                return 1
            print(f"protobuf stubs in sync ({len(fresh)} files)")
            return 0
        for p in fresh:
            shutil.copyfile(tmp / p, ROOT / p)
        print(f"wrote {len(fresh)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
