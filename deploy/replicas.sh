#!/usr/bin/env bash
# N `bora serve` replicas on this machine behind vllm-router (pinned in
# deploy/router-requirements.txt, installed with pip into .cache/router-venv on first use).
# Each replica publishes its KV-cache events (vLLM's format), which `--policy kv_aware` routes
# on; every policy also reads the replicas' load from their /metrics.
#
# Usage: deploy/replicas.sh [-n N] [--policy POLICY] [--port PORT] [--host HOST]
#                           [--bin BORA] [-- ARGS FOR EACH bora serve ...]
#   -n N          replicas (default 2)
#   --policy P    the router's policy: kv_aware (default), cache_aware, round_robin,
#                 power_of_two, consistent_hash, ...
#   --port PORT   the router's port (default 8080); replica i serves HTTP on PORT+i and
#                 publishes KV events on PORT+100+2i (replay on the port after)
#   --bin BORA    the bora binary (default target/release/bora, built if missing)
#   --router-arg ARG   one more argument for vllm-router (repeat it: --router-arg
#                 --router-temperature --router-arg 20)
# Everything after `--` goes to each `bora serve` (--model, --kv-cache-mib, ...; the built-in
# demo model when no --model). Prints the router's URL, then runs until interrupted; Ctrl-C
# (or SIGTERM) stops the router and the replicas. Logs: $BORA_REPLICAS_LOGS (default a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
n=2 policy=kv_aware port=8080 host=127.0.0.1 bin=target/release/bora
router_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -n) n=$2; shift 2 ;;
        --policy) policy=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --host) host=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --router-arg) router_args+=("$2"); shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "replicas.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
serve_args=("$@")
[ -x "$bin" ] || cargo build --release -q -p bora-cli
venv=${BORA_ROUTER_VENV:-.cache/router-venv}
if [ ! -x "$venv/bin/vllm-router" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r deploy/router-requirements.txt
fi
logs=${BORA_REPLICAS_LOGS:-$(mktemp -d)}
mkdir -p "$logs"
pids=()
stop() {
    trap - INT TERM EXIT
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

workers=() sources=() replays=()
for i in $(seq 1 "$n"); do
    url="http://$host:$((port + i))"
    events="tcp://$host:$((port + 100 + 2 * i))"
    replay="tcp://$host:$((port + 101 + 2 * i))"
    "$bin" serve --host "$host" --port $((port + i)) --kv-events "$events" \
        --kv-events-replay "$replay" "${serve_args[@]}" > "$logs/replica$i.log" 2>&1 &
    pids+=($!)
    echo "replica $i: $url (pid $!, KV events $events, replay $replay, log $logs/replica$i.log)"
    workers+=("$url") sources+=(--kv-event-source "$url=$events")
    replays+=(--kv-event-replay-source "$url=$replay")
done
# The replicas answer /health once their model is loaded.
for i in "${!workers[@]}"; do
    url=${workers[$i]}
    for _ in $(seq 1 600); do
        curl -sf "$url/health" > /dev/null && break
        kill -0 "${pids[$i]}" 2>/dev/null || { echo "$url exited: see $logs" >&2; exit 1; }
        sleep 0.5
    done
    curl -sf "$url/health" > /dev/null || { echo "$url never became healthy" >&2; exit 1; }
done
model=$(curl -sf "${workers[0]}/v1/models" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
rargs=()
if [ "$policy" = kv_aware ]; then
    rargs=("${sources[@]}" "${replays[@]}" --kv-event-model "$model")
    # At temperature 0 a request no replica has cached ties, and ties go to the first replica:
    # with replicas mostly idle between an agent's turns, most conversations would start there.
    # A small temperature breaks ties at random; against a cached prefix (a cost of hundreds of
    # tokens x requests) it changes nothing. Given with --router-arg, the user's value wins.
    [[ " ${router_args[*]} " == *" --router-temperature "* ]] || rargs+=(--router-temperature 10)
fi
# The router tries a request 5 times and stops sending to a replica once 10 tries in a row
# failed there (its circuit breaker): a replica killed under load could take all 5 tries of a
# request before that. At 3 a request's own failed tries open it and its next goes elsewhere.
[[ " ${router_args[*]} " == *" --cb-failure-threshold "* ]] || rargs+=(--cb-failure-threshold 3)
"$venv/bin/vllm-router" --host "$host" --port "$port" --worker-urls "${workers[@]}" \
    --policy "$policy" "${rargs[@]}" "${router_args[@]}" > "$logs/router.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do
    curl -sf "http://$host:$port/health" > /dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "vllm-router exited: see $logs/router.log" >&2; exit 1; }
    sleep 0.5
done
echo "router: http://$host:$port (vllm-router --policy $policy, model \`$model\`, pid ${pids[-1]}, log $logs/router.log)"
# Until the router ends (a replica that stops is the router's to route around).
wait "${pids[-1]}" || true
