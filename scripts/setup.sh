#!/usr/bin/env bash
# Set up a fresh machine for this repository: a virtual environment in .venv with the project and its
# extras installed (torch==2.13.0 CPU for training/export), plus, with --system, the Debian packages
# the test suite uses. Idempotent: a second run with an unchanged pyproject.toml does nothing.
#
#   scripts/setup.sh            # .venv with .[train,dev]
#   scripts/setup.sh --system   # also apt packages for the tests (prometheus, ...); needs root
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"' || {
  echo "setup: Python >= 3.11 is required (found $("$PY" --version 2>&1))" >&2; exit 1; }

if [[ "${1:-}" == "--system" ]]; then
  # Debian packages the tests start for real (see tests/README.md).
  pkgs=(prometheus libb64-0d nginx docker.io docker-compose debootstrap)  # nginx: tests/scale; docker: tests/deploy
  pkgs+=(chromium fonts-dejavu-core fonts-liberation wrk)  # tests/http: the page in headless Chromium; HTTP load (bench)
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

if [[ "${1:-}" == "--system" && ! -x .venv-tools/bin/perf_analyzer ]]; then
  # perf_analyzer for the protocol tests: the PyPI `perf-analyzer` package is an empty placeholder; the
  # real binary ships inside the tritonclient 2.41.0 wheel, which conflicts with the project's pins, so
  # it lives in its own venv. It needs libb64 (Debian) and libcudart.so.12 (this wheel) even on a CPU.
  echo "setup: installing perf_analyzer into .venv-tools ..."
  rm -rf .venv-tools
  "$PY" -m venv .venv-tools
  .venv-tools/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    tritonclient==2.41.0 nvidia-cuda-runtime-cu12==12.9.79 2>&1 | { grep -v "^WARNING: Location" || true; }
  [[ -x .venv-tools/bin/perf_analyzer ]] || { echo "setup: perf_analyzer install failed" >&2; exit 1; }
fi

if [[ "${1:-}" == "--system" ]] && ! .venv-tools/bin/python -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("kserve") and u.find_spec("kubernetes")))' 2>/dev/null; then
  # The KServe SDK's generated model classes, for tests/scale/test_kubernetes.py (deploy/kubernetes/check_kserve.py).
  # kserve pins grpcio/protobuf/fastapi/... that clash with the project's; only its models are used, so
  # it goes in without dependencies, beside `kubernetes`, whose model classes KServe's refer to.
  echo "setup: installing the KServe SDK models into .venv-tools ..."
  .venv-tools/bin/python -m pip install -q --disable-pip-version-check --no-warn-conflicts kubernetes==33.1.0 2>&1 | { grep -v "^WARNING: Location" || true; }
  .venv-tools/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-warn-conflicts kserve==0.21.0 2>&1 | { grep -v "^WARNING: Location" || true; }
fi

stamp=.venv/.installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x .venv/bin/cnn ]]; then
  exit 0
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
pip_quiet() {  # pip's output minus this machine's index-location noise; pip's exit status kept
  .venv/bin/python -m pip -q --disable-pip-version-check "$@" 2>&1 | { grep -v -e "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}
pip_quiet install --upgrade pip
echo "setup: installing the project into .venv (serving + train + dev extras) ..."
pip_quiet install -e '.[train,dev]'
.venv/bin/python -c 'import torch, onnxruntime, grpc, tritonclient.grpc' || { echo "setup: install failed" >&2; exit 1; }
echo "$want" > "$stamp"
