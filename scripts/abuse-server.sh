#!/usr/bin/env bash
# lse-serve against hostile and careless clients (a measurement, not a test).
#
# Starts lse-serve on loopback (HTTP and gRPC) with a small generated model, a model
# folder holding a link that leads out of it, an admin token and the memory-budget
# flags below; replays the probes of issue 19 one after another (each bounded in
# requests and time), and prints per probe the answer and the server's peak RSS
# (VmHWM, reset before each probe through /proc/PID/clear_refs) against the bound the
# README states for these flags:
#
#   RSS_idle + max_connections x max_body + queue x pixels_per_image x 20 B
#            + queue x max_answer
#
# (pixels_per_image = min(--max-pixels, --max-request-pixels)). Loopback only; the
# server is stopped at the end (and on any error).
#
# Usage: scripts/abuse-server.sh
# Environment:
#   ABUSE_PROFILE=dev      cargo profile of lse-serve (dev: target/debug)
#   ABUSE_SKIP_BUILD=1     use the built binaries as they are
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '[abuse-server] %s\n' "$*" >&2; }
die() { printf '[abuse-server] error: %s\n' "$*" >&2; exit 1; }

PROFILE="${ABUSE_PROFILE:-dev}"
bindir="target/$PROFILE"
[ "$PROFILE" = "dev" ] && bindir="target/debug"
py="$root/.venv/bin/python"
[ -x "$py" ] || die "no .venv/bin/python (run scripts/setup.sh)"
if [ -z "${ABUSE_SKIP_BUILD:-}" ]; then
  say "building lse-serve and lse-train ($PROFILE)"
  cargo build -q --profile="$PROFILE" -p lse-server --bin lse-serve
  cargo build -q --profile="$PROFILE" -p lse-trainer --bin lse-train
fi

# The flags under test (the README's formula is evaluated with these).
QUEUE=16
MAX_CONNECTIONS=64
MAX_BODY_MB=20
MAX_PIXELS=4000000
MAX_REQUEST_PIXELS=8000000
MAX_ANSWER_MB=64

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

say "generating a width-1/8 model at 256x128"
"$bindir/lse-train" init --width 0.125 --classes 19 --out "$work/m.safetensors" >/dev/null
mkdir -p "$work/models/default" "$work/outside"
"$bindir/lse-train" export "$work/m.safetensors" --out "$work/models/default/model.onnx" \
  --train-size 256x128 >/dev/null 2>&1
cp "$work/models/default/model.onnx" "$work/outside/model.onnx"
ln -s "$work/outside" "$work/models/evil"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"

"$bindir/lse-serve" --model-dir "$work/models" --addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
  --admin-token-file "$work/token" --queue "$QUEUE" --max-connections "$MAX_CONNECTIONS" \
  --max-body-mb "$MAX_BODY_MB" --max-pixels "$MAX_PIXELS" \
  --max-request-pixels "$MAX_REQUEST_PIXELS" --max-answer-mb "$MAX_ANSWER_MB" \
  --header-timeout-ms 2000 --idle-timeout-ms 5000 --timeout-ms 60000 \
  >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 600); do
  grep -q '^listening on ' "$work/server.out" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; die "lse-serve exited"; }
  sleep 0.1
done
addr="$(sed -n 's/^listening on //p' "$work/server.out" | head -n1)"
grpc="$(sed -n 's/^grpc listening on //p' "$work/server.out" | head -n1)"
[ -n "$addr" ] && [ -n "$grpc" ] || die "lse-serve did not start"
until curl -fsS "http://$addr/readyz" >/dev/null 2>&1; do sleep 0.1; done
say "server http://$addr, gRPC $grpc, pid $server_pid"

timeout 900 "$py" "$root/scripts/abuse_server.py" "$addr" "$grpc" "$server_pid" "$work" \
  "$QUEUE" "$MAX_CONNECTIONS" "$MAX_BODY_MB" "$MAX_PIXELS" "$MAX_REQUEST_PIXELS" "$MAX_ANSWER_MB"
