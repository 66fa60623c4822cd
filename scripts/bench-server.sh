#!/usr/bin/env bash
# Benchmark of lse-serve under load (a benchmark, not a test).
#
# Starts lse-serve on loopback with a small model, drives it with Debian's `wrk`
# (installed when missing) posting one PNG, and reports for concurrency 1, 8 and 32:
# requests/s, p50/p99 latency and errors; the server's RSS before and after 10,000
# requests; and beside it the offline throughput of the same model on the same image
# through the runtime (`lse bench`, same thread budget). Then the same image through the
# Open Inference Protocol (POST /v2/models/default/infer, the PNG as a BYTES tensor in
# the binary-data extension, label map back as binary) at concurrency 1 and 8. Goals (issue 5): throughput at
# concurrency 8 >= 0.9x offline, p99 <= 3x p50 at concurrency 8, zero errors, RSS
# growth <= 5 %.
#
# Usage: scripts/bench-server.sh [--json] [MODEL.onnx]
# Environment:
#   BENCH_IMAGE=WxH        size of the posted picture (default 512x256; the server's sample)
#   BENCH_TRAIN_SIZE=WxH   training size of the generated model when no MODEL is given (256x128)
#   BENCH_WIDTH=0.125      width multiplier of the generated model
#   BENCH_SECONDS=15       duration of each concurrency run
#   BENCH_REQUESTS=10000   requests between the two RSS readings
#   BENCH_THREADS=N        thread budget of the model (default: all cores)
#   BENCH_MAX_BATCH=8 BENCH_BATCH_WAIT_MS=5 BENCH_WORKERS=1   server settings
#   BENCH_PROFILE=release  cargo profile of the binaries
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

json=0
model=""
for arg in "$@"; do
  case "$arg" in
    --json) json=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) model="$arg" ;;
  esac
done

say() { printf '[bench-server] %s\n' "$*" >&2; }
die() { printf '[bench-server] error: %s\n' "$*" >&2; exit 1; }

IMAGE="${BENCH_IMAGE:-512x256}"
TRAIN_SIZE="${BENCH_TRAIN_SIZE:-256x128}"
WIDTH="${BENCH_WIDTH:-0.125}"
SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
REQUESTS="${BENCH_REQUESTS:-10000}"
THREADS="${BENCH_THREADS:-$(nproc)}"
MAX_BATCH="${BENCH_MAX_BATCH:-8}"
BATCH_WAIT_MS="${BENCH_BATCH_WAIT_MS:-5}"
WORKERS="${BENCH_WORKERS:-1}"
PROFILE="${BENCH_PROFILE:-release}"

if ! command -v wrk >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "wrk not found and apt-get unavailable: install wrk"
  say "installing wrk (Debian package)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed to summarise the results"

[ -e .venv/libonnxruntime.so ] || bash scripts/setup.sh
profile_flag="--profile=$PROFILE"
bindir="target/$PROFILE"
[ "$PROFILE" = "dev" ] && bindir="target/debug"
say "building lse-serve and lse ($PROFILE)"
cargo build -q "$profile_flag" -p lse-server --bin lse-serve
cargo build -q "$profile_flag" -p lse-runtime --bin lse

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

if [ -z "$model" ]; then
  train=""
  for p in target/release/lse-train target/debug/lse-train; do
    [ -x "$p" ] && { train="$p"; break; }
  done
  if [ -z "$train" ]; then
    say "building lse-train (debug) to generate the benchmark model"
    cargo build -q -p lse-trainer --bin lse-train
    train=target/debug/lse-train
  fi
  say "generating a width-$WIDTH model at $TRAIN_SIZE"
  "$train" init --width "$WIDTH" --classes 19 --out "$work/bench.safetensors" >/dev/null
  "$train" export "$work/bench.safetensors" --out "$work/model.onnx" --train-size "$TRAIN_SIZE" >/dev/null 2>&1
  model="$work/model.onnx"
fi
[ -f "$model" ] || die "model $model not found"

"$bindir/lse-serve" --model "$model" --addr 127.0.0.1:0 --workers "$WORKERS" --threads "$THREADS" \
  --max-batch "$MAX_BATCH" --batch-wait-ms "$BATCH_WAIT_MS" --queue 256 --timeout-ms 60000 \
  >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
addr=""
for _ in $(seq 600); do
  addr="$(sed -n 's/^listening on //p' "$work/server.out" | head -n1)"
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; die "lse-serve exited"; }
  sleep 0.1
done
[ -n "$addr" ] || die "lse-serve did not start"
url="http://$addr"
until curl -fsS "$url/readyz" >/dev/null 2>&1; do sleep 0.1; done

w="${IMAGE%x*}"; h="${IMAGE#*x}"
curl -fsS "$url/v1/sample.png?width=$w&height=$h" -o "$work/image.png"
say "server $url, model $model, image ${w}x${h} PNG ($(stat -c %s "$work/image.png") bytes), $THREADS threads"

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status"; }

# wrk script: POST the PNG; optionally stop each thread after a number of answers;
# print one JSON line with the summary.
cat >"$work/post.lua" <<'EOF'
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "image/png"
local header_len = os.getenv("BENCH_HEADER_LEN") or ""
if header_len ~= "" then
  wrk.headers["Content-Type"] = "application/octet-stream"
  wrk.headers["Inference-Header-Content-Length"] = header_len
end
local limit = tonumber(os.getenv("BENCH_PER_THREAD") or "0")
local count = 0
if limit > 0 then
  response = function(status, headers, body)
    count = count + 1
    if count >= limit then wrk.thread:stop() end
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3,
    e.connect, e.read, e.write, e.status, e.timeout))
end
EOF
export BENCH_BODY="$work/image.png"

answered() { # segmentation requests the server has answered so far (any status)
  curl -fsS "$url/metrics" | awk '/^lse_http_requests_total\{route="\/v1\/segment"/ {n += $2} END {print n + 0}'
}

target_path="/v1/segment"
run_wrk() { # run_wrk NAME CONNECTIONS THREADS DURATION [REQUESTS]  (posts to $target_path)
  # With REQUESTS, each wrk thread stops after its share of answers; wrk itself only
  # ends after its duration or on SIGINT, so the server's counter is watched and wrk
  # interrupted (it still prints its summary) once all answers are in.
  local name="$1" c="$2" t="$3" d="$4" n="${5:-0}" per=0 base wpid
  [ "$n" -gt 0 ] && { per=$(( (n + t - 1) / t )); base="$(answered)"; }
  BENCH_PER_THREAD="$per" wrk -t"$t" -c"$c" -d"$d" --timeout 60s -s "$work/post.lua" \
    "$url$target_path" >"$work/wrk-$name.txt" 2>&1 &
  wpid=$!
  if [ "$n" -gt 0 ]; then
    while kill -0 "$wpid" 2>/dev/null && [ "$(answered)" -lt $(( base + per * t )) ]; do sleep 0.5; done
    sleep 0.5
    kill -INT "$wpid" 2>/dev/null || true
  fi
  wait "$wpid" || { cat "$work/wrk-$name.txt" >&2; die "wrk failed"; }
  sed -n 's/^RESULT //p' "$work/wrk-$name.txt" >"$work/$name.json"
  [ -s "$work/$name.json" ] || { cat "$work/wrk-$name.txt" >&2; die "no wrk result"; }
}

say "warm-up (3 s at concurrency 32)"
run_wrk warmup 32 2 3s
rss_before="$(rss_kib)"
say "RSS before: $rss_before KiB; sending $REQUESTS requests at concurrency 8"
run_wrk rss 8 2 3600s "$REQUESTS"
rss_after="$(rss_kib)"
say "RSS after: $rss_after KiB"

for c in 1 8 32; do
  t=2; [ "$c" -eq 1 ] && t=1
  say "concurrency $c for ${SECONDS_PER_RUN}s"
  run_wrk "c$c" "$c" "$t" "${SECONDS_PER_RUN}s"
done
curl -fsS "$url/metrics" >"$work/metrics.txt"

# The Open Inference Protocol: one BYTES element (4-byte little-endian length, then the
# PNG) after the JSON header, the label map back as binary data.
BENCH_HEADER_LEN="$(python3 - "$work/image.png" "$work/v2.bin" <<'EOF'
import json, struct, sys
png = open(sys.argv[1], "rb").read()
head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                               "parameters": {"binary_data_size": len(png) + 4}}],
                   "outputs": [{"name": "labels", "parameters": {"binary_data": True}}]}).encode()
open(sys.argv[2], "wb").write(head + struct.pack("<I", len(png)) + png)
print(len(head))
EOF
)"
export BENCH_HEADER_LEN BENCH_BODY="$work/v2.bin"
target_path="/v2/models/default/infer"
for c in 1 8; do
  t=2; [ "$c" -eq 1 ] && t=1
  say "v2 binary infer, concurrency $c for ${SECONDS_PER_RUN}s"
  run_wrk "v2c$c" "$c" "$t" "${SECONDS_PER_RUN}s"
done

kill -TERM "$server_pid"
wait "$server_pid" || die "lse-serve did not exit cleanly"
server_pid=""

say "offline: lse bench (batch 1 and batch $MAX_BATCH, $THREADS threads)"
"$bindir/lse" bench "$model" --image "$work/image.png" --threads "$THREADS" --iters 40 --json >"$work/offline1.json" 2>/dev/null
"$bindir/lse" bench "$model" --image "$work/image.png" --threads "$THREADS" --batch "$MAX_BATCH" --iters 8 --json >"$work/offlineB.json" 2>/dev/null

WORK="$work" JSON="$json" RSS_BEFORE="$rss_before" RSS_AFTER="$rss_after" IMAGE="${w}x${h}" \
THREADS="$THREADS" MODEL="$model" MAX_BATCH="$MAX_BATCH" python3 - <<'EOF'
import json, os, re
work = os.environ["WORK"]
load = lambda n: json.load(open(f"{work}/{n}.json"))
runs = {c: load(f"c{c}") for c in (1, 8, 32)}
runs_v2 = {c: load(f"v2c{c}") for c in (1, 8)}
rss = load("rss")
off1, offb = load("offline1"), load("offlineB")
offline = max(off1["images_per_s"], offb["images_per_s"])
before, after = int(os.environ["RSS_BEFORE"]), int(os.environ["RSS_AFTER"])
growth = 100.0 * (after - before) / before
metrics = open(f"{work}/metrics.txt").read()
def m(series):
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None
bs = (m("lse_batch_size_sum") or 0) / max(1, m("lse_batch_size_count") or 1)
out = {"model": os.environ["MODEL"], "image": os.environ["IMAGE"], "threads": int(os.environ["THREADS"]),
       "offline_images_per_s": {"batch1": off1["images_per_s"], f"batch{os.environ['MAX_BATCH']}": offb["images_per_s"]},
       "runs": {}, "rss_kib": {"before": before, "after": after, "growth_percent": growth,
       "requests_between": rss["requests"], "errors_between": sum(rss["errors"].values())},
       "mean_batch_size": bs}
for c, r in runs.items():
    rps = r["requests"] / r["seconds"]
    out["runs"][f"c{c}"] = {"requests_per_s": rps, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                            "max_ms": r["max_ms"], "requests": r["requests"],
                            "errors": sum(r["errors"].values()), "ratio_vs_offline": rps / offline}
for c, r in runs_v2.items():
    rps = r["requests"] / r["seconds"]
    out["runs"][f"v2_c{c}"] = {"requests_per_s": rps, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                               "max_ms": r["max_ms"], "requests": r["requests"],
                               "errors": sum(r["errors"].values()), "ratio_vs_offline": rps / offline}
c8 = out["runs"]["c8"]
errors = sum(v["errors"] for v in out["runs"].values()) + out["rss_kib"]["errors_between"]
out["goals"] = {"c8_throughput_ge_0.9x_offline": c8["ratio_vs_offline"] >= 0.9,
                "c8_p99_le_3x_p50": c8["p99_ms"] <= 3 * c8["p50_ms"],
                "zero_errors": errors == 0, "rss_growth_le_5_percent": growth <= 5.0}
if os.environ["JSON"] == "1":
    print(json.dumps(out, indent=2))
else:
    print(f"model {out['model']}, image {out['image']} PNG, {out['threads']} threads")
    print(f"offline (lse bench): {off1['images_per_s']:.1f} images/s at batch 1, "
          f"{offb['images_per_s']:.1f} at batch {os.environ['MAX_BATCH']} (reference: the better one)")
    print(f"{'concurrency':>11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'x offline':>9}")
    for key in ("c1", "c8", "c32", "v2_c1", "v2_c8"):
        r = out["runs"][key]
        name = key.replace("v2_c", "v2 ") if key.startswith("v2") else "/v1 " + key[1:]
        print(f"{name:>11} {r['requests_per_s']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['errors']:>6} {r['ratio_vs_offline']:>9.2f}")
    print(f"RSS {before/1024:.1f} MiB -> {after/1024:.1f} MiB after {rss['requests']} requests "
          f"({growth:+.2f} %), mean batch size {bs:.2f}")
    for k, v in out["goals"].items():
        print(f"goal {k}: {'met' if v else 'NOT met'}")
EOF
