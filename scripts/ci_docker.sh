#!/usr/bin/env bash
# The docker-compose stack, tested for real on a machine with no Docker engine running and no image
# registry: start a private dockerd, make the base image with debootstrap, build the images offline,
# bring up `server` and `prometheus` from docker-compose.yml (+ docker-compose.ci.yml: host networking
# on 127.0.0.1 ports), classify a sample image through the container, and check that the Prometheus
# container scraped the server. Everything it starts or mounts is removed on exit (trap).
#
#   scripts/ci_docker.sh                      (root; run by tests/deploy/test_docker.py)
#
# Needs Debian's docker.io, docker-compose, debootstrap and prometheus (scripts/setup.sh --system) and
# .venv (scripts/setup.sh). Settings (environment):
#   CNN_CI_REPOSITORY   a model repository holding lenet5-digits (default: train + export one now)
#   CNN_DOCKER_CACHE    where the debootstrapped base tarball is kept between runs
#                       (default .cache/docker; "off" = do not cache)
#   DEBIAN_MIRROR       default: the first Debian URI in /etc/apt/sources.list*, else deb.debian.org
#   CNN_CI_KEEP=1       keep the work folder (logs) after the run
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

PY="$ROOT/.venv/bin/python"
MODEL_NAME=lenet5-digits
SUITE=bookworm
BASE_TAG=python:3.11-slim-bookworm  # what deploy/docker/Dockerfile names
DEBIAN_TAG=debian:bookworm-slim     # what deploy/docker/prometheus-debian.Dockerfile names
DOCKER=/usr/bin/docker              # Debian's client, matching its dockerd (another may come first on PATH)
COMPOSE=/usr/bin/docker-compose
T_START=$(date +%s)

log() { printf '[ci_docker %4ss] %s\n' "$(( $(date +%s) - T_START ))" "$*"; }
die() { printf 'ci_docker: FAILED: %s\n' "$*" >&2; exit 1; }

# --- preconditions: fail loudly, naming what is missing ---------------------------------------------
[[ $(id -u) == 0 ]] || die "must run as root (it starts dockerd and debootstraps)"
missing=()
for tool in /usr/sbin/dockerd "$DOCKER" "$COMPOSE" /usr/sbin/debootstrap /usr/bin/apt-get; do
  [[ -x $tool ]] || missing+=("$tool")
done
((${#missing[@]} == 0)) || die "missing ${missing[*]}: run scripts/setup.sh --system (Debian packages docker.io docker-compose debootstrap)"
[[ -x $PY ]] || die "missing .venv: run scripts/setup.sh"

# --- work folder and cleanup ------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/cnnci.XXXXXX)  # short: dockerd's unix sockets live under it
chmod 755 "$WORK"
SOCK="$WORK/docker.sock"
export DOCKER_HOST="unix://$SOCK"
export COMPOSE_PROJECT_NAME="cnnci$$"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
DOCKERD_PID=""
COMPOSE_UP=0
COMPOSE_FILES=(-f docker-compose.yml -f docker-compose.ci.yml)

unmount_under() {  # every mount below $1, deepest first
  local m
  awk -v p="$1/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$?
  set +e
  if [[ -n $DOCKERD_PID ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    if ((COMPOSE_UP)); then
      if ((rc != 0)); then
        log "--- diagnostics"
        "$COMPOSE" "${COMPOSE_FILES[@]}" ps 2>&1
        "$COMPOSE" "${COMPOSE_FILES[@]}" logs --no-color --tail=60 2>&1
      fi
      timeout 60 "$COMPOSE" "${COMPOSE_FILES[@]}" down -v --timeout 5 >/dev/null 2>&1
      log "cleanup: compose down"
    fi
    ids=$("$DOCKER" ps -aq 2>/dev/null)
    [[ -n $ids ]] && "$DOCKER" rm -f $ids >/dev/null 2>&1
    kill -TERM "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null
    wait "$DOCKERD_PID" 2>/dev/null
    log "cleanup: dockerd stopped"
  fi
  # dockerd's own containerd (exec root under $WORK) normally exits with it; end it if it did not.
  if [[ -f $WORK/exec/containerd/containerd.pid ]]; then
    cpid=$(cat "$WORK/exec/containerd/containerd.pid" 2>/dev/null)
    [[ -n $cpid ]] && kill -KILL "$cpid" 2>/dev/null
  fi
  unmount_under "$WORK"
  if [[ ${CNN_CI_KEEP:-0} == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf --one-file-system "$WORK"
  fi
  if ((rc == 0)); then log "PASSED"; else printf 'ci_docker: FAILED (exit %s) after %ss\n' "$rc" "$(( $(date +%s) - T_START ))" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { STEP_T0=$(date +%s); STEP_NAME=$1; log "$1 ..."; }
done_step() { log "$STEP_NAME: done in $(( $(date +%s) - STEP_T0 ))s"; }

free_ports() {  # N free TCP ports on 127.0.0.1
  "$PY" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# --- 1. a private dockerd: no bridge, no iptables, everything under $WORK ----------------------------
step "starting dockerd"
/usr/sbin/dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false --userland-proxy=false \
  --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" -H "$DOCKER_HOST" \
  >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for i in $(seq 1 120); do
  "$DOCKER" info >/dev/null 2>&1 && break
  kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -30 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
  sleep 0.5
  ((i == 120)) && { tail -30 "$WORK/dockerd.log" >&2; die "dockerd did not answer in 60 s"; }
done
log "dockerd $("$DOCKER" version -f '{{.Server.Version}}') storage $("$DOCKER" info -f '{{.Driver}}')"
done_step

# --- 2. the base image: debootstrapped bookworm with python3 (3.11) + venv, cached as a tarball -----
mirror=${DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
  mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
             | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -1 | tr -d ' ' || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi
CACHE=${CNN_DOCKER_CACHE:-$ROOT/.cache/docker}
base_tar=""
[[ $CACHE != off ]] && base_tar="$CACHE/$SUITE-python3-venv-minbase.tar"
step "base image $BASE_TAG"
if [[ -n $base_tar && -s $base_tar ]]; then
  log "using cached $base_tar"
  tar_file=$base_tar
else
  log "debootstrap --variant=minbase $SUITE from $mirror"
  if ! /usr/sbin/debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$WORK/rootfs" "$mirror" \
      >"$WORK/debootstrap.log" 2>&1; then
    tail -30 "$WORK/debootstrap.log" >&2
    die "debootstrap failed (log above)"
  fi
  unmount_under "$WORK/rootfs"
  rm -rf "$WORK/rootfs"/var/cache/apt/archives/*.deb "$WORK/rootfs"/var/lib/apt/lists/* \
         "$WORK/rootfs"/usr/share/doc/* "$WORK/rootfs"/usr/share/man/* "$WORK/rootfs"/usr/share/locale/*
  tar_file="$WORK/rootfs.tar"
  tar -C "$WORK/rootfs" --numeric-owner -cf "$tar_file" .
  rm -rf --one-file-system "$WORK/rootfs"
  if [[ -n $base_tar ]]; then
    mkdir -p "$CACHE" && cp "$tar_file" "$base_tar.tmp" && mv "$base_tar.tmp" "$base_tar"
  fi
fi
"$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$tar_file" "$BASE_TAG" >/dev/null
"$DOCKER" tag "$BASE_TAG" "$DEBIAN_TAG"
"$DOCKER" run --rm --network none "$BASE_TAG" python3 -c 'import sys, venv; assert sys.version_info[:2] == (3, 11), sys.version; print("base python", sys.version.split()[0])'
done_step

# --- 3. build contexts: the project's sources + wheels downloaded on the host; prometheus .deb ------
step "wheels and build contexts"
CTX="$WORK/ctx"
mkdir -p "$CTX/deploy"
cp -r pyproject.toml README.md protos preprocessing server client training export "$CTX/"
cp -r deploy/docker "$CTX/deploy/docker"
find "$CTX" -name __pycache__ -prune -exec rm -rf {} +
WHEELS="$CTX/deploy/docker/wheels"
mkdir -p "$WHEELS"
# The project's wheel and every dependency's (for this same Python 3.11 on x86_64 glibc), plus the
# build backend, so `pip install --no-index` in the image resolves offline.
"$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir "$WHEELS" "$CTX" >"$WORK/pip.log" 2>&1 \
  || { tail -30 "$WORK/pip.log" >&2; die "pip wheel failed"; }
"$PY" -m pip download -q --disable-pip-version-check --only-binary=:all: --dest "$WHEELS" 'setuptools>=68' wheel \
  >>"$WORK/pip.log" 2>&1 || { tail -30 "$WORK/pip.log" >&2; die "pip download failed"; }
rm -rf "$CTX/build" "$CTX"/*.egg-info
log "$(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"
PROM_CTX="$WORK/prom-ctx"
mkdir -p "$PROM_CTX"
if ! (cd "$PROM_CTX" && apt-get download -q prometheus >"$WORK/apt.log" 2>&1); then
  apt-get update -qq >>"$WORK/apt.log" 2>&1 || true  # package lists may have been cleaned
  (cd "$PROM_CTX" && apt-get download -q prometheus >>"$WORK/apt.log" 2>&1) \
    || { tail -20 "$WORK/apt.log" >&2; die "apt-get download prometheus failed"; }
fi
done_step

# --- 4. images, built with no network ---------------------------------------------------------------
step "docker build cnn-server:ci (target server)"
"$DOCKER" build --network none --target server --build-arg PIP_ARGS=--no-index -t cnn-server:ci \
  -f "$CTX/deploy/docker/Dockerfile" "$CTX" >"$WORK/build-server.log" 2>&1 \
  || { tail -40 "$WORK/build-server.log" >&2; die "server image build failed"; }
grep -E "^onnxruntime " "$WORK/build-server.log" | tail -1 || true
done_step
step "docker build cnn-prometheus:ci"
"$DOCKER" build --network none -t cnn-prometheus:ci -f deploy/docker/prometheus-debian.Dockerfile "$PROM_CTX" \
  >"$WORK/build-prometheus.log" 2>&1 || { tail -40 "$WORK/build-prometheus.log" >&2; die "prometheus image build failed"; }
done_step
log "images: $("$DOCKER" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | tr '\n' ' ')"

# the image's promises: no torch, not root
"$DOCKER" run --rm --network none --entrypoint python cnn-server:ci -c 'import importlib.util as u, os; assert u.find_spec("torch") is None, "torch in the server image"; assert os.getuid() != 0, "server image runs as root"; print("server image: no torch, uid", os.getuid())'

# --- 5. the model repository, readable by the container's user -------------------------------------
step "model repository"
if [[ -n ${CNN_CI_REPOSITORY:-} ]]; then
  [[ -f $CNN_CI_REPOSITORY/$MODEL_NAME/1/model.onnx ]] || die "CNN_CI_REPOSITORY=$CNN_CI_REPOSITORY has no $MODEL_NAME/1/model.onnx"
  src_repo=$CNN_CI_REPOSITORY
else
  log "training + exporting $MODEL_NAME on the host (set CNN_CI_REPOSITORY to skip)"
  .venv/bin/cnn train --model lenet5 --data digits --out "$WORK/run" >"$WORK/train.log" 2>&1 \
    || { tail -30 "$WORK/train.log" >&2; die "cnn train failed"; }
  .venv/bin/cnn export "$WORK/run/best.pt" --repository "$WORK/trained-repo" --name "$MODEL_NAME" >"$WORK/export.log" 2>&1 \
    || { tail -30 "$WORK/export.log" >&2; die "cnn export failed"; }
  src_repo="$WORK/trained-repo"
fi
REPO="$WORK/models"
cp -r "$src_repo" "$REPO"
chmod -R a+rX "$REPO"
done_step

# --- 6. a sample image -------------------------------------------------------------------------------
SAMPLE=$(ls examples/digits/*.png 2>/dev/null | head -1 || true)
if [[ -z $SAMPLE ]]; then
  SAMPLE="$WORK/sample.png"
  "$PY" - "$SAMPLE" <<'EOF'
import sys
import numpy as np
from PIL import Image
try:  # a real handwritten digit when scikit-learn (the train extra) is there
    from sklearn.datasets import load_digits
    img = (load_digits().images[0] * 255 / 16).astype(np.uint8)
except ImportError:  # else a drawn "1"
    img = np.zeros((8, 8), np.uint8)
    img[1:7, 4] = 255
Image.fromarray(img, "L").resize((28, 28)).save(sys.argv[1])
EOF
fi
log "sample image $SAMPLE"

# --- 7. up: server + prometheus from the compose file, host networking on 127.0.0.1 -----------------
read -r GRPC_PORT METRICS_PORT PROM_PORT <<<"$(free_ports 3)"
export CNN_CI_GRPC_PORT=$GRPC_PORT CNN_CI_METRICS_PORT=$METRICS_PORT CNN_CI_PROMETHEUS_PORT=$PROM_PORT
export CNN_CI_REPOSITORY=$REPO CNN_CI_PROMETHEUS_DIR="$WORK/prometheus"
"$PY" deploy/prometheus/render.py --out "$CNN_CI_PROMETHEUS_DIR" --server "127.0.0.1:$METRICS_PORT" \
  --self "127.0.0.1:$PROM_PORT" --interval 1s >/dev/null
chmod -R a+rX "$CNN_CI_PROMETHEUS_DIR"
# docker-compose.yml + docker-compose.ci.yml, merged by docker-compose itself. Compose v1 (Debian's)
# appends list options and has no `!reset`, so the published `ports` of the host-network services are
# dropped here, as Docker discards them anyway in host network mode (v1 refuses the combination).
"$COMPOSE" "${COMPOSE_FILES[@]}" config >"$WORK/compose.merged.yml"
"$PY" - "$WORK/compose.merged.yml" "$WORK/compose.ci.yml" <<'EOF'
import sys
import yaml
cfg = yaml.safe_load(open(sys.argv[1]))
keep = ("server", "prometheus")  # only these run here; the others would make compose create a bridge network
cfg["services"] = {name: svc for name, svc in cfg["services"].items() if name in keep}
for svc in cfg["services"].values():
    assert svc.get("network_mode") == "host", svc
    svc.pop("ports", None)
used = {v.split(":")[0] for svc in cfg["services"].values() for v in svc.get("volumes", []) if isinstance(v, str)}
cfg["volumes"] = {k: v for k, v in cfg.get("volumes", {}).items() if k in used}
cfg.pop("networks", None)
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
EOF
COMPOSE_FILES=(-f "$WORK/compose.ci.yml")
"$COMPOSE" "${COMPOSE_FILES[@]}" config -q
step "docker-compose up server prometheus (gRPC $GRPC_PORT, metrics $METRICS_PORT, prometheus $PROM_PORT)"
COMPOSE_UP=1
"$COMPOSE" "${COMPOSE_FILES[@]}" up -d --no-build server prometheus 2>&1 | sed 's/^/  /'
server_id=$("$COMPOSE" "${COMPOSE_FILES[@]}" ps -q server)
prom_id=$("$COMPOSE" "${COMPOSE_FILES[@]}" ps -q prometheus)
[[ -n $server_id && -n $prom_id ]] || die "containers did not start"
health=""
for i in $(seq 1 120); do
  health=$("$DOCKER" inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$server_id")
  [[ $health == "running healthy" ]] && break
  [[ $health == running* ]] || die "server container is '$health'"
  sleep 1
done
[[ $health == "running healthy" ]] || die "server container not healthy after 120 s ($health)"
log "server container: $health ($("$DOCKER" inspect -f '{{.Config.User}} init={{.HostConfig.Init}} stop-timeout={{.Config.StopTimeout}}' "$server_id"))"
done_step

# --- 8. classify through the container ---------------------------------------------------------------
step "classify $SAMPLE through the container"
N=3
for i in $(seq 1 $N); do
  out=$(.venv/bin/cnn classify "$SAMPLE" --server "127.0.0.1:$GRPC_PORT" --model "$MODEL_NAME" --top-k 3 --json) \
    || die "cnn classify failed"
done
echo "  $out"
"$PY" -c 'import json, sys; d = json.loads(sys.argv[1]); assert len(d["top_k"]) == 3, d; print("  top-1:", d["top_k"][0]["label"], round(d["top_k"][0]["probability"], 3))' "$out"
done_step

# --- 9. the Prometheus container scraped the server --------------------------------------------------
step "Prometheus container has the server's metrics"
"$PY" - "$PROM_PORT" "$MODEL_NAME" "$N" <<'EOF'
import json, sys, time, urllib.parse, urllib.request
port, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

def query(q):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]

checks = {
    'up{job="cnn-server"}': 1.0,
    f'sum(cnn_requests_total{{rpc="Classify", model="{model}", code="OK"}})': float(n),
    f'sum(cnn_inference_rows_total{{model="{model}"}})': float(n),
    f'count(cnn_model_loaded_info{{model="{model}", version="1"}})': 1.0,
}
deadline = time.monotonic() + 60
pending = dict(checks)
last = {}
while pending and time.monotonic() < deadline:
    for q, want in list(pending.items()):
        try:
            res = query(q)
        except OSError as e:
            last[q] = repr(e)
            continue
        last[q] = res
        if res and float(res[0]["value"][1]) == want:
            print(f"  {q} = {want:g}")
            del pending[q]
    time.sleep(0.5)
if pending:
    sys.exit("Prometheus did not see: " + "; ".join(f"{q} == {w:g} (last: {last.get(q)})" for q, w in pending.items()))
EOF
done_step

# --- 10. SIGTERM drains and exits 0 within the grace period ------------------------------------------
step "docker-compose stop server (drain)"
"$COMPOSE" "${COMPOSE_FILES[@]}" stop server 2>&1 | sed 's/^/  /'
code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$server_id")
[[ $code == 0 ]] || die "server exited $code on SIGTERM (want 0: drained)"
# Read the whole log first: `docker logs | grep -q` under pipefail fails when grep exits at its first match
# and docker logs, still writing, dies of SIGPIPE (seen once in CI with "draining" in the log).
server_log=$("$DOCKER" logs "$server_id" 2>&1)
grep -q "draining" <<<"$server_log" || die "server log has no drain message"
done_step
log "total $(( $(date +%s) - T_START ))s"
