#!/usr/bin/env bash
# The test suite, on a fresh machine: set up (including the Debian packages the tests start for
# real), check the generated protobuf stubs are in sync, lint and type-check the server, then run
# pytest. Extra arguments go to pytest.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh tests/server -x # a part
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --system
.venv/bin/python -m protos.generate --check
# Code health ([tool.ruff] and [tool.mypy] in pyproject.toml): lint + format check + type check of the server.
# export/ is configured for lint too (`ruff check export`) and joins this line once its findings are fixed.
.venv/bin/ruff check server
.venv/bin/ruff format --check server
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
