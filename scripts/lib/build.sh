# Sourced by the scripts that run the release binaries (bench-adapt, premise-sweep,
# train-source).

# release_build: set-up (scripts/setup.sh) and the release build of every binary,
# unless LSE_SKIP_BUILD is set (a caller that has built already, or a run on a copied
# build).
release_build() {
  [ -n "${LSE_SKIP_BUILD:-}" ] && return 0
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
  bash "$root/scripts/setup.sh"
  (cd "$root" && cargo build --release --workspace --bins -q)
}
