#!/usr/bin/env bash
# The cluster's MLflow tracking server: database backend, proxied artifacts, bound to the cluster network.
#
#   cluster/mlflow-server.sh start|stop|status
#
# Settings (environment):
#   MLFLOW_HOST       address to bind: the head's cluster-network IP (default: first of `hostname -I`).
#                     Never 0.0.0.0 on a host with a public interface: the server has no authentication.
#   MLFLOW_PORT       default 5000
#   MLFLOW_BACKEND    database URI. Default sqlite on the head's LOCAL disk (~/mlflow/mlflow.db): only the
#                     driver writes to it, and SQLite on NFS corrupts under locking. For a long-lived
#                     team server use PostgreSQL: postgresql://mlflow:<pw>@<db-host>:5432/mlflow
#   MLFLOW_ARTIFACTS  where the server stores artifacts (proxied: clients upload over HTTP, so workers need
#                     no credentials or mounts). A shared path (/mnt/nfs/tunevlseg/mlartifacts) or s3://...
#   MLFLOW_STATE      pid and log files (default ~/.tunevlseg-mlflow)
#   MLFLOW_ALLOWED    extra Host headers to accept, comma separated (e.g. a DNS name of the head)
#
# Trials and the driver then use MLFLOW_TRACKING_URI=http://$MLFLOW_HOST:$MLFLOW_PORT; the preflight
# checks that every node reaches it. Why these flags (orchestration.md §5, MLflow 3.17):
# - `--artifacts-destination` (proxied artifacts): experiments get `mlflow-artifacts:/` locations and the
#   server writes the files, so an artifact logged on any node lands in one place.
# - The security middleware only accepts Host headers it knows; --allowed-hosts names the cluster address.
# - The server starts uvicorn and job-runner children: it runs under setsid and `stop` ends that session.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$(dirname "$HERE")/.venv}"
MLFLOW="$VENV/bin/mlflow"
HOST="${MLFLOW_HOST:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
PORT="${MLFLOW_PORT:-5000}"
STATE="${MLFLOW_STATE:-$HOME/.tunevlseg-mlflow}"
BACKEND="${MLFLOW_BACKEND:-sqlite:///$STATE/mlflow.db}"
ARTIFACTS="${MLFLOW_ARTIFACTS:-$STATE/artifacts}"
PIDFILE="$STATE/server.pid"

die() { echo "mlflow-server: $*" >&2; exit 1; }
session_pids() { ps -eo pid=,sid= | awk -v s="$1" '$2 == s {print $1}'; }

start() {
  [ -x "$MLFLOW" ] || die "$MLFLOW not found; run 'make install' first (or set VENV)"
  [ -n "$HOST" ] || die "cannot tell this node's cluster address; set MLFLOW_HOST"
  [ "$HOST" != "0.0.0.0" ] \
    || echo "mlflow-server: warning: 0.0.0.0 exposes an unauthenticated server on every interface" >&2
  if [ -f "$PIDFILE" ] && [ -n "$(session_pids "$(cat "$PIDFILE")")" ]; then
    die "already running (pid $(cat "$PIDFILE")); '$0 stop' first"
  fi
  mkdir -p "$STATE"
  case "$ARTIFACTS" in *://*) ;; *) mkdir -p "$ARTIFACTS" ;; esac
  local allowed="$HOST,$HOST:$PORT,localhost:$PORT,127.0.0.1:$PORT${MLFLOW_ALLOWED:+,$MLFLOW_ALLOWED}"
  setsid "$MLFLOW" server --host "$HOST" --port "$PORT" --workers 2 \
    --backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS" \
    --allowed-hosts "$allowed" >"$STATE/server.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 60); do
    if curl -sf "http://$HOST:$PORT/health" >/dev/null 2>&1; then
      echo "MLflow at http://$HOST:$PORT (backend $BACKEND, artifacts $ARTIFACTS, log $STATE/server.log)"
      echo "export MLFLOW_TRACKING_URI=http://$HOST:$PORT"
      return 0
    fi
    sleep 1
  done
  stop
  die "the server did not answer within 60 s; see $STATE/server.log"
}

stop() {
  [ -f "$PIDFILE" ] || { echo "not running"; return 0; }
  local leader pids
  leader="$(cat "$PIDFILE")"
  pids="$(session_pids "$leader")"
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 20); do [ -z "$(session_pids "$leader")" ] && break; sleep 0.5; done
    pids="$(session_pids "$leader")"
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
  echo "stopped"
}

status() {
  if [ -f "$PIDFILE" ] && [ -n "$(session_pids "$(cat "$PIDFILE")")" ]; then
    echo "running (pid $(cat "$PIDFILE")): http://$HOST:$PORT"
    curl -sf "http://$HOST:$PORT/health" >/dev/null && echo "health: OK" || echo "health: not answering"
  else
    echo "not running"; return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
