#!/usr/bin/env bash
# Packs everything the GPU check (scripts/gpu-run.sh) needs into the ignored folder
# .gpu/, for a machine that has a GPU, python3 with PyTorch, and nothing else (no Rust,
# no network): the release binaries lse and lse-train and the benchmark examples
# bench_train and bench_generate (stripped), the Python benchmark scripts with the
# reference FCN8s they import, gpu-run.sh itself, and a MANIFEST (path, bytes, sha256
# of every file). The tiny synthetic data set and the full-width model are made on the
# machine (lse synth, lse-train init/export), so no data travels. Prints the bundle's
# size (goal: at most 25 MiB) and the `carry` list of a call on the lent GPU machine.
#
#   scripts/gpu-bundle.sh [--out DIR] [--no-build --from BIN_DIR]
#
#   --out DIR        where to pack (default: .gpu in the repository)
#   --no-build       take the binaries from BIN_DIR (lse, lse-train, examples/bench_*)
#                    instead of building them (tests pack the debug build this way)
#   CARGO_TARGET_DIR honoured for the release build (default: target)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

OUT_DIR="$root/.gpu" FROM="" BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2;;
    --from) FROM="$2"; shift 2;;
    --no-build) BUILD=0; shift;;
    *) echo "gpu-bundle: unknown argument $1" >&2; exit 2;;
  esac
done

# The bundle's contents, relative to its root (the MANIFEST lists them with sizes).
BINS=(bin/lse bin/lse-train bin/bench_train bin/bench_generate)
FILES=(scripts/gpu-run.sh scripts/gpu_results.py scripts/bench_train.py
  scripts/bench_generate.py scripts/bench_infer_torch.py trainer/tests/py/fcn8s_reference.py)

if [ "$BUILD" = 1 ]; then
  [ -z "$FROM" ] || { echo "gpu-bundle: --from needs --no-build" >&2; exit 2; }
  echo "[gpu-bundle] release build of lse, lse-train and the benchmark examples" >&2
  cargo build --release -q -p lse-runtime --bin lse
  cargo build --release -q -p lse-trainer --bin lse-train --example bench_train --example bench_generate
  FROM="${CARGO_TARGET_DIR:-$root/target}/release"
fi
[ -n "$FROM" ] || { echo "gpu-bundle: --no-build needs --from BIN_DIR" >&2; exit 2; }

src_of() { # the built file of a bundle binary
  case "$1" in
    bin/lse | bin/lse-train) echo "$FROM/${1#bin/}";;
    bin/*) echo "$FROM/examples/${1#bin/}";;
  esac
}
for b in "${BINS[@]}"; do
  [ -f "$(src_of "$b")" ] || {
    echo "gpu-bundle: $(src_of "$b") is missing (build it: cargo build -p lse-runtime --bin lse;" \
      "cargo build -p lse-trainer --bin lse-train --examples)" >&2
    exit 1
  }
done

tmp="$OUT_DIR.tmp"
rm -rf "$tmp"
mkdir -p "$tmp/bin"
for b in "${BINS[@]}"; do
  strip -o "$tmp/$b" "$(src_of "$b")"
done
for f in "${FILES[@]}"; do
  mkdir -p "$tmp/$(dirname "$f")"
  cp "$f" "$tmp/$f"
done
{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version | head -n1)"
  echo "rustc $(rustc --version 2>/dev/null | cut -d' ' -f2)"
  # The newest glibc symbol version the binaries need: the GPU machine's glibc must be
  # at least this.
  echo "needs $(objdump -T "$tmp"/bin/* | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)"
} >"$tmp/BUILD"
(cd "$tmp" && find . -type f ! -name MANIFEST | sed 's|^\./||' | LC_ALL=C sort |
  while read -r f; do printf '%s %s %s\n' "$f" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)"; done) >"$tmp/MANIFEST"
rm -rf "$OUT_DIR"
mv "$tmp" "$OUT_DIR"

bytes="$(du -sb "$OUT_DIR" | cut -f1)"
mib="$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')"
echo "[gpu-bundle] $OUT_DIR: $(wc -l <"$OUT_DIR/MANIFEST") files, $mib MiB (goal <= 25 MiB)$([ "$bytes" -le $((25 * 1048576)) ] || echo ' OVER THE GOAL')" >&2
cat "$OUT_DIR/BUILD" >&2
rel="${OUT_DIR#"$root"/}"
echo "carry: [\"$rel\"]"
echo "command: bash $rel/scripts/gpu-run.sh"
