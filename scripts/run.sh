#!/usr/bin/env bash
# The main job, on a fresh machine: set up, train the default model (LeNet-5 on MNIST, which ships in
# data/mnist/) if the repository lacks it, export it as a verified ONNX version, and serve.
#
#   scripts/run.sh [extra `cnn serve` flags]     (Ctrl-C / SIGTERM drains and stops)
#
# Settings: REPOSITORY (default model_repository), RUN_DIR (default runs/lenet5-mnist),
# MODEL_NAME (default lenet5-digits: the served digit recogniser).
# Training (recipe training/recipes/lenet5_mnist.toml, 12 epochs, 1 thread) took 85 s on a quiet 2-core AMD EPYC
# (99.56 % test); the whole first run on a fresh clone, install included, was serving after 224 s there and after
# about 5 min 50 s on a contended 2-core Intel Xeon (202 s of training; docs/training.md).
# It shows its progress; an interrupted run resumes from RUN_DIR/last.pt the next time.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

REPOSITORY=${REPOSITORY:-model_repository}
RUN_DIR=${RUN_DIR:-runs/lenet5-mnist}
MODEL_NAME=${MODEL_NAME:-lenet5-digits}
CNN=.venv/bin/cnn

if ! compgen -G "$REPOSITORY/$MODEL_NAME/[0-9]*/model.onnx" >/dev/null; then
  if [[ ! -f "$RUN_DIR/summary.json" ]]; then
    if [[ -f "$RUN_DIR/last.pt" ]]; then
      echo "run: resuming the interrupted training in $RUN_DIR"
      "$CNN" train --resume "$RUN_DIR/last.pt"
    else
      echo "run: training LeNet-5 on MNIST (data/mnist) -> $RUN_DIR"
      "$CNN" train --model lenet5 --data mnist --out "$RUN_DIR" --overwrite
    fi
  fi
  echo "run: exporting $RUN_DIR/best.pt -> $REPOSITORY/$MODEL_NAME"
  "$CNN" export "$RUN_DIR/best.pt" --repository "$REPOSITORY" --name "$MODEL_NAME"
fi
echo "run: serving $REPOSITORY (try: .venv/bin/cnn classify examples/mnist/*.png)"
# The served digit recogniser is the default model, so `cnn classify` needs no --model even when more
# models are published beside it (a --default-model given to this script still wins).
exec "$CNN" serve --repository "$REPOSITORY" --default-model "${CNN_SERVER_DEFAULT_MODEL:-$MODEL_NAME}" "$@"
