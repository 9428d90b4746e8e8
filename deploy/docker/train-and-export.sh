#!/bin/sh
# The trainer job (docker compose --profile train run --rm trainer): train a model, then export it as
# the next version of NAME in the shared model repository, which the server picks up by polling.
#
#   MODEL (lenet5)  DATA (digits)  NAME (lenet5-digits)  REPOSITORY (/models)  RUN_DIR (/runs/$NAME)
#   TRAIN_ARGS / EXPORT_ARGS: extra flags for `cnn train` / `cnn export` (e.g. TRAIN_ARGS="--epochs 5")
#   MODEL_PROVIDERS: if set (e.g. "cuda,cpu"), written into NAME's config.yaml after the export
set -eu
MODEL=${MODEL:-lenet5}
DATA=${DATA:-digits}
NAME=${NAME:-lenet5-digits}
REPOSITORY=${REPOSITORY:-/models}
RUN_DIR=${RUN_DIR:-/runs/$NAME}
echo "trainer: cnn train --model $MODEL --data $DATA --out $RUN_DIR ${TRAIN_ARGS:-}"
# shellcheck disable=SC2086
cnn train --model "$MODEL" --data "$DATA" --out "$RUN_DIR" --overwrite ${TRAIN_ARGS:-}  # each job trains anew
echo "trainer: cnn export $RUN_DIR/best.pt --repository $REPOSITORY --name $NAME ${EXPORT_ARGS:-}"
# shellcheck disable=SC2086
cnn export "$RUN_DIR/best.pt" --repository "$REPOSITORY" --name "$NAME" ${EXPORT_ARGS:-}
if [ -n "${MODEL_PROVIDERS:-}" ]; then
  python /opt/cnn/set_providers.py "$REPOSITORY/$NAME/config.yaml" "$MODEL_PROVIDERS"
fi
