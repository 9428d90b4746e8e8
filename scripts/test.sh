#!/usr/bin/env bash
# The test suite, on a fresh machine: set up (including the Debian packages the tests start for
# real), check the generated protobuf stubs are in sync, lint and type-check the code, then run
# pytest. Extra arguments go to pytest.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh tests/server -x # a part
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --system
.venv/bin/python -m protos.generate --check
# Code health ([tool.ruff] and [tool.mypy] in pyproject.toml): lint + format check + type check (mypy's
# files: server/, export/, preprocessing/, and the training/ modules they import). Lint and format check cover
# every Python folder.
PY_FOLDERS=(server export preprocessing training client bench tests protos)
.venv/bin/ruff check "${PY_FOLDERS[@]}"
.venv/bin/ruff format --check "${PY_FOLDERS[@]}"
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
