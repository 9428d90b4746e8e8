#!/usr/bin/env bash
# The test suite, on a fresh machine: set up (including the Debian packages the tests start for
# real), check the generated protobuf stubs are in sync, then run pytest. Extra arguments go to pytest.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh tests/server -x # a part
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --system
.venv/bin/python -m protos.generate --check
exec .venv/bin/python -m pytest "$@"
