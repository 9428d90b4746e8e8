#!/usr/bin/env bash
# Try the CUDA provider on a GPU machine, with one command:
#
#   scripts/gpu_check.sh [REPO]     (default: model_repository, as scripts/run.sh leaves it)
#
# Installs onnxruntime-gpu into .venv-gpu (the serving install, no torch), copies REPO with every model
# set to `providers: [cuda]` and `cuda_fallback: false` (so a missing CUDA provider fails the load
# instead of falling back), starts the server, and checks that each model is served by
# CUDAExecutionProvider and classifies the sample digits.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=${1:-model_repository}
[[ -d "$REPO" ]] || { echo "gpu_check: $REPO does not exist; run scripts/run.sh once (or cnn export) first" >&2; exit 2; }
PY=${PYTHON:-python3}
[[ -x .venv-gpu/bin/python ]] || "$PY" -m venv .venv-gpu
.venv-gpu/bin/pip install -q --disable-pip-version-check . 2>&1 | { grep -v "^WARNING: Location" || true; }
.venv-gpu/bin/pip uninstall -q -y onnxruntime
.venv-gpu/bin/pip install -q --disable-pip-version-check onnxruntime-gpu 2>&1 | { grep -v "^WARNING: Location" || true; }
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r "$REPO" "$work/repo"
for cfg in "$work"/repo/*/config.yaml; do
  .venv-gpu/bin/python - "$cfg" <<'PY'
import sys, yaml
p = sys.argv[1]; c = yaml.safe_load(open(p)); c["providers"] = ["cuda"]; c["cuda_fallback"] = False
yaml.safe_dump(c, open(p, "w"))
PY
done
.venv-gpu/bin/cnn serve --repository "$work/repo" --grpc-address 127.0.0.1:0 --metrics-address 127.0.0.1:0 \
  --poll-interval-s 0 > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 120); do grep -q "serving gRPC" "$work/out" && break; sleep 1; done
cat "$work/err" >&2
addr=$(grep -o "serving gRPC on [0-9.:]*" "$work/out" | awk '{print $4}')
metrics=$(grep -o "http://[0-9.:]*/metrics" "$work/out")
[[ -n "$addr" ]] || { echo "gpu_check: the server did not start" >&2; exit 1; }
curl -fsS "$metrics" | grep 'cnn_model_loaded_info' | tee "$work/loaded"
grep -q 'provider="CUDAExecutionProvider"' "$work/loaded" || { echo "gpu_check: no model runs on CUDA" >&2; exit 1; }
.venv-gpu/bin/cnn classify examples/digits/*.png --server "$addr" --top-k 1
echo "gpu_check: OK"
