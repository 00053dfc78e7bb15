#!/usr/bin/env bash
# A real two-node Ray cluster on this machine, plus an MLflow server, for tests and for trying the
# cluster recipes without hardware.
#
#   cluster/local-two-node.sh up     [STATE_DIR]   start head (127.0.0.2) + worker (127.0.0.3) + MLflow
#   cluster/local-two-node.sh status [STATE_DIR]   show what runs and the settings to use
#   cluster/local-two-node.sh down   [STATE_DIR]   stop exactly what `up` started
#
# Then:  source STATE_DIR/env && make benchmark SPEC=experiments/smoke.yaml RAY_ADDRESS=$RAY_ADDRESS \
#            STORAGE=$TUNEVLSEG_STORAGE
#
# Why it looks like this (orchestration.md §6, measured on Ray 2.60):
# - Ray rewrites 127.0.0.1/localhost to the host's interface IP, so the nodes use other loopback
#   addresses, which Linux routes to this host like 127.0.0.1.
# - Token authentication is on: every Ray process here (nodes, drivers that source `env`) gets
#   RAY_AUTH_MODE=token and reads the token from RAY_AUTH_TOKEN_PATH; a driver without them is refused.
# - Each node is `ray start --block` run under `setsid`, so the node's processes (GCS, raylet, workers,
#   agents) share one session id: `down` kills that session and nothing else. It never runs `ray stop`,
#   which kills every Ray process of the host, including other people's.
# - Both "nodes" see the same disk, so $STATE/storage stands in for the shared NFS mount.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
CMD="${1:-}"
STATE="${2:-${TUNEVLSEG_CLUSTER_DIR:-/tmp/tunevlseg-cluster-$(id -un)}}"
HEAD_IP="${HEAD_IP:-127.0.0.2}"
WORKER_IP="${WORKER_IP:-127.0.0.3}"
VENV="${VENV:-$REPO/.venv}"
PY="$VENV/bin/python"
RAY="$VENV/bin/ray"
MLFLOW="$VENV/bin/mlflow"
START_TIMEOUT="${START_TIMEOUT:-90}"
OBJECT_STORE_BYTES="${OBJECT_STORE_BYTES:-100000000}"  # 100 MB per node: tests move tiny objects

die() { echo "local-two-node: $*" >&2; exit 1; }

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Session members of a leader PID (the leader included); empty when the session is gone.
session_pids() { ps -eo pid=,sid= | awk -v s="$1" '$2 == s {print $1}'; }

# Descendants by parent PID: catches a child that left the session with setsid (Ray does not, but MLflow
# or a future Ray might).
descendants() {
  local p kids
  kids=$(ps -eo pid=,ppid= | awk -v p="$1" '$2 == p {print $1}')
  for p in $kids; do echo "$p"; descendants "$p"; done
}

alive() { kill -0 "$1" 2>/dev/null; }

# Start "$@" as a new session leader in the background; the PID is the session id.
spawn() {
  local name="$1"; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/pids/$name.pid"
}

node_env() {
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token"
  # Trials import the project through the venv's editable install (`make install`), as on a real node.
  export RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit="$1" what="$2"; shift 2
  local t=0
  until "$@" >/dev/null 2>&1; do
    t=$((t + 1))
    [ "$t" -le "$limit" ] || { echo "local-two-node: timed out after ${limit}s waiting for $what" >&2; return 1; }
    sleep 1
  done
}

nodes_up() {  # the head answers and both nodes registered
  "$PY" - "$1" <<'EOF'
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
n = sum(1 for x in ray.nodes() if x["Alive"])
ray.shutdown()
sys.exit(0 if n >= 2 else 1)
EOF
}

mlflow_up() { curl -sf "http://127.0.0.1:$1/health" | grep -q OK; }

up() {
  [ -x "$RAY" ] || die "$RAY not found; run 'make install' first (or set VENV)"
  if [ -f "$STATE/pids/head.pid" ] && alive "$(cat "$STATE/pids/head.pid")"; then
    die "already up (state in $STATE); run '$0 down $STATE' first"
  fi
  # Unix socket paths are limited to 107 bytes and Ray nests its sockets deep under the temp dir.
  [ "${#STATE}" -le 40 ] || die "state dir $STATE is too long for Ray's socket paths; use a path of <= 40 characters"
  for ip in "$HEAD_IP" "$WORKER_IP"; do
    "$PY" -c "import socket, sys; s = socket.socket(); s.bind(('$ip', 0))" 2>/dev/null \
      || die "cannot bind $ip; this needs Linux loopback (all of 127.0.0.0/8 routes to lo)"
  done
  mkdir -p "$STATE"/{pids,logs,storage,mlflow/artifacts,r}
  chmod 700 "$STATE"
  "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$STATE/auth_token"
  chmod 600 "$STATE/auth_token"
  local port mlport
  port="${RAY_PORT:-$(free_port)}"
  mlport="${MLFLOW_PORT:-$(free_port)}"
  node_env

  # Head: one CPU like the worker, so that both nodes take trials (a cloud head gets --num-cpus=0, see
  # aws.yaml; here that would leave one node for every trial and nothing to fail over to).
  spawn head "$RAY" start --head --block --node-ip-address="$HEAD_IP" --port="$port" --num-cpus=1 --num-gpus=0 \
    --include-dashboard=false --dashboard-port="$(free_port)" --disable-usage-stats \
    --object-store-memory="$OBJECT_STORE_BYTES" --temp-dir="$STATE/r/h" --resources='{"head": 1}'
  echo "head   $HEAD_IP:$port  (pid $(cat "$STATE/pids/head.pid"), log $STATE/logs/head.log)"
  wait_for "$START_TIMEOUT" "the head's GCS on port $port" "$PY" -c \
    "import socket; socket.create_connection(('$HEAD_IP', $port), 1)" || { down; exit 1; }

  spawn worker "$RAY" start --block --address="$HEAD_IP:$port" --node-ip-address="$WORKER_IP" --num-cpus=1 \
    --num-gpus=0 --disable-usage-stats --object-store-memory="$OBJECT_STORE_BYTES" \
    --temp-dir="$STATE/r/w" --resources='{"worker": 1}'
  echo "worker $WORKER_IP  (pid $(cat "$STATE/pids/worker.pid"), log $STATE/logs/worker.log)"

  # MLflow on loopback with a database backend and proxied artifacts, as on a cluster (mlflow-server.sh).
  # Job execution off: it adds seven huey worker processes that tests never use on a 2-core machine.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false spawn mlflow "$MLFLOW" server --host 127.0.0.1 --port "$mlport" \
    --workers 1 --backend-store-uri "sqlite:///$STATE/mlflow/mlflow.db" --artifacts-destination "$STATE/mlflow/artifacts"
  echo "mlflow http://127.0.0.1:$mlport  (pid $(cat "$STATE/pids/mlflow.pid"), log $STATE/logs/mlflow.log)"

  cat >"$STATE/env" <<EOF
export RAY_ADDRESS=$HEAD_IP:$port
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$STATE/auth_token
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlport
export TUNEVLSEG_STORAGE=$STATE/storage
EOF
  wait_for "$START_TIMEOUT" "both Ray nodes to register" nodes_up "$HEAD_IP:$port" || { down; exit 1; }
  wait_for "$START_TIMEOUT" "MLflow on port $mlport" mlflow_up "$mlport" || { down; exit 1; }
  echo "up: source $STATE/env"
}

stop_one() {  # stop_one NAME: TERM, then KILL, the session (and descendants) of the recorded leader
  local name="$1" file="$STATE/pids/$1.pid" leader pids t
  [ -f "$file" ] || return 0
  leader="$(cat "$file")"
  collect() { { session_pids "$leader"; if alive "$leader"; then descendants "$leader"; fi; } | sort -un || true; }
  pids="$(collect)"
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for t in $(seq 1 20); do
      pids="$(collect)"
      [ -z "$pids" ] && break
      sleep 0.5
    done
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
    fi
  fi
  rm -f "$file"
  echo "stopped $name (session $leader)"
}

down() {
  [ -d "$STATE/pids" ] || { echo "nothing to stop in $STATE"; return 0; }
  # Worker first: a worker whose head vanished first retries the GCS for a while.
  stop_one worker
  stop_one head
  stop_one mlflow
  rm -f "$STATE/env"
}

status() {
  local name leader n rc=0
  [ -d "$STATE/pids" ] || { echo "not up (no state in $STATE)"; return 1; }
  for name in head worker mlflow; do
    if [ -f "$STATE/pids/$name.pid" ]; then
      leader="$(cat "$STATE/pids/$name.pid")"
      n="$(session_pids "$leader" | wc -l)"
      if [ "$n" -gt 0 ]; then echo "$name: session $leader, $n processes"
      else echo "$name: session $leader, DEAD (see $STATE/logs/$name.log)"; rc=1; fi
    else
      echo "$name: not started"; rc=1
    fi
  done
  [ -f "$STATE/env" ] && cat "$STATE/env"
  return $rc
}

case "$CMD" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status [STATE_DIR]   (default state dir: $STATE)" >&2; exit 2 ;;
esac
