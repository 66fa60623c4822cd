# Sourced by the scripts that generate the built-in domains (demo, bench-adapt,
# premise-sweep). A regime is a target domain: `default` is lse synth's built-in
# one, any other NAME is scripts/regimes/NAME.json (lse synth --domains).

# regime_domains NAME WHO: sets the array `domains` to the `lse synth` arguments of
# the regime NAME; an unknown NAME stops the script with a message naming WHO (the
# setting it came from).
regime_domains() {
  local name="$1" who="$2"
  local file
  file="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/regimes/$name.json"
  domains=()
  [ "$name" = default ] && return 0
  if [ ! -f "$file" ]; then
    echo "error: $who: no regime '$name' (no scripts/regimes/$name.json; known: default $(regime_names))" >&2
    exit 2
  fi
  domains=(--domains "$file")
}

# regime_names: the names of the committed regimes, space-separated.
regime_names() {
  local f names=()
  for f in "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"/regimes/*.json; do
    names+=("$(basename "$f" .json)")
  done
  echo "${names[*]}"
}
