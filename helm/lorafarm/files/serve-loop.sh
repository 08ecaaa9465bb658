#!/usr/bin/env bash
# Keeps the lorafarm scheduler running on this Ray cluster. Runs as the `lorafarm-scheduler`
# sidecar of the head pod (templates/raycluster.yaml), from the ConfigMap <fullname>-scheduler.
#
# Why a loop in a sidecar: `lorafarm serve` starts the scheduler as a *detached* named Ray actor
# and returns, so there is no process whose exit Kubernetes could restart. The actor dies with
# the head pod (and the Ray cluster with it), or alone (an OOM, a bug, `ray kill`). This loop:
#   1. waits until the head's GCS answers (the cluster is ready), then
#   2. every CHECK_INTERVAL_SECONDS asks the dashboard's state API whether the actor
#      `scheduler` (namespace `lorafarm`) is ALIVE — a read-only HTTP call that leaves no driver
#      job behind — and runs `lorafarm serve` only when it is not. `lorafarm serve` is
#      idempotent (get-or-create by name), so a check that errors falls back to running it.
# A new scheduler recovers every job from the store (RUNNING jobs re-queue). A head pod restart
# restarts this container too, which starts again at step 1.
#
# Environment (set by the chart): RAY_ADDRESS (GCS, <pod-ip>:6379), LORAFARM_STORE,
# LORAFARM_TENANTS (file, optional), LORAFARM_METRICS_PORT, LORAFARM_API_PORT (optional), LORAFARM_HANG_TIMEOUT,
# LORAFARM_RESERVE_CPUS, CHECK_INTERVAL_SECONDS, RESTART_ON_CONFIG_CHANGE (true|false),
# RAY_DASHBOARD_URL (default http://127.0.0.1:8265), POD_IP, and RAY_AUTH_* for token auth.
set -uo pipefail

interval="${CHECK_INTERVAL_SECONDS:-30}"
dashboard="${RAY_DASHBOARD_URL:-http://127.0.0.1:8265}"
tenants="${LORAFARM_TENANTS:-}"
restart_on_change="${RESTART_ON_CONFIG_CHANGE:-false}"

log() { printf '%s serve-loop: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }

# Exit promptly on SIGTERM (pod deletion) instead of waiting out a sleep.
stopping=0
sleeper=""
trap 'stopping=1; [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null' TERM INT
nap() { sleep "$1" & sleeper=$!; wait "$sleeper" 2>/dev/null; sleeper=""; }

serve_args=(serve --store "${LORAFARM_STORE:?LORAFARM_STORE is not set}")
serve_args+=(--hang-timeout "${LORAFARM_HANG_TIMEOUT:-1800}" --reserve-cpus "${LORAFARM_RESERVE_CPUS:-0}")
if [ -n "${LORAFARM_METRICS_PORT:-}" ]; then serve_args+=(--metrics-port "$LORAFARM_METRICS_PORT"); fi
if [ -n "${LORAFARM_API_PORT:-}" ]; then serve_args+=(--api-port "$LORAFARM_API_PORT"); fi
if [ -n "$tenants" ]; then serve_args+=(--tenants "$tenants"); fi

tenants_digest() {
    if [ -n "$tenants" ] && [ -r "$tenants" ]; then sha256sum <"$tenants" | cut -d' ' -f1; fi
}

# Exit 0: the scheduler actor is ALIVE; 1: it is not; 2: the state API could not say.
# Warns when the actor runs on another node: the metrics Service selects the head pod.
scheduler_state() {
    python - "$dashboard" "${POD_IP:-}" <<'PY'
import sys

try:
    from ray.util.state import list_actors, list_nodes

    address, pod_ip = sys.argv[1], sys.argv[2]
    alive = list_actors(address=address, raise_on_missing_output=False, filters=[
        ("name", "=", "scheduler"), ("ray_namespace", "=", "lorafarm"), ("state", "=", "ALIVE")])
    if alive and pod_ip:
        nodes = list_nodes(address=address, raise_on_missing_output=False,
                           filters=[("node_id", "=", alive[0].node_id)])
        if nodes and nodes[0].node_ip != pod_ip:
            print(f"warning: the scheduler runs on node {nodes[0].node_ip}, not on this head "
                  f"({pod_ip}); the metrics Service does not reach it", flush=True)
except Exception as e:  # noqa: BLE001 — any failure means "unknown", and serve decides
    print(f"state API check failed: {e}", flush=True)
    sys.exit(2)
sys.exit(0 if alive else 1)
PY
}

stop_scheduler() {
    python - <<'PY'
import os

import ray

ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", namespace="lorafarm", log_to_driver=False)
try:
    ray.kill(ray.get_actor("scheduler", namespace="lorafarm"), no_restart=True)
    print("stopped the scheduler", flush=True)
except ValueError:
    print("no scheduler to stop", flush=True)
PY
}

log "waiting for the Ray GCS at ${RAY_ADDRESS:-auto}"
until ray health-check --address "${RAY_ADDRESS:-auto}" >/dev/null 2>&1; do
    [ "$stopping" = 1 ] && exit 0
    nap 5
done
log "Ray is up; checking the scheduler every ${interval}s"

applied=""
while [ "$stopping" = 0 ]; do
    scheduler_state
    state=$?
    if [ "$state" = 0 ] && [ "$restart_on_change" = true ] && [ -n "$applied" ] \
        && [ "$(tenants_digest)" != "$applied" ]; then
        log "the tenants file changed: restarting the scheduler to apply it"
        stop_scheduler
        state=1
    fi
    if [ "$state" != 0 ]; then
        [ "$state" = 1 ] && log "the scheduler is not running: starting it"
        if lorafarm "${serve_args[@]}"; then
            applied="$(tenants_digest)"
        else
            log "lorafarm serve failed (exit $?); trying again in ${interval}s"
        fi
    elif [ -z "$applied" ]; then
        applied="$(tenants_digest)"  # found running at start: take the current file as applied
    fi
    [ "$stopping" = 1 ] && break
    nap "$interval"
done
log "stopping"
