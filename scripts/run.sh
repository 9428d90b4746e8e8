#!/usr/bin/env bash
# The main job, on a fresh machine: set up, train the default model (LeNet-5 on the bundled
# handwritten digits) if the repository lacks it, export it as a verified ONNX version, and serve.
#
#   scripts/run.sh [extra `cnn serve` flags]     (Ctrl-C / SIGTERM drains and stops)
#
# Settings: REPOSITORY (default model_repository), RUN_DIR (default runs/lenet5-digits),
# MODEL_NAME (default lenet5-digits).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

REPOSITORY=${REPOSITORY:-model_repository}
RUN_DIR=${RUN_DIR:-runs/lenet5-digits}
MODEL_NAME=${MODEL_NAME:-lenet5-digits}
CNN=.venv/bin/cnn

if ! compgen -G "$REPOSITORY/$MODEL_NAME/[0-9]*/model.onnx" >/dev/null; then
  if [[ ! -f "$RUN_DIR/best.pt" ]]; then
    echo "run: training LeNet-5 on the bundled digits -> $RUN_DIR"
    "$CNN" train --model lenet5 --data digits --out "$RUN_DIR"
  fi
  echo "run: exporting $RUN_DIR/best.pt -> $REPOSITORY/$MODEL_NAME"
  "$CNN" export "$RUN_DIR/best.pt" --repository "$REPOSITORY" --name "$MODEL_NAME"
fi
echo "run: serving $REPOSITORY (try: .venv/bin/cnn classify examples/digits/*.png)"
exec "$CNN" serve --repository "$REPOSITORY" "$@"
