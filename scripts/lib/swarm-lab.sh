# Shared by scripts/lab-tests and scripts/bench-swarm: one publisher and N subscribers on public
# hosts of a netlab lab with shaped links. Sourced, not run.
#
# swarm_case SIZE_MIB N RATE DELAY  runs the case and sets:
#   SLOWEST_S   completion time of the slowest subscriber (s, from its start)
#   PUB_TX      bytes the publisher host sent on its interface during the run
#   TREE_BYTES  size of the published tree
# It fails (returns non-zero) if any subscriber does not complete or verify.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NETLAB=${NETLAB:-$REPO/../shared/scripts/netlab}
BIN=${BIN:-$REPO/target/release/treecast}
export NETLAB_PREFIX=${NETLAB_PREFIX:-tc$$-}

lab_cleanup() {
  "$NETLAB" down >/dev/null 2>&1 || true
  if [ -n "${LAB_WORK:-}" ]; then rm -rf "$LAB_WORK"; fi
  LAB_WORK=""
}

tx_bytes() { "$NETLAB" exec "$1" -- cat /sys/class/net/eth0/statistics/tx_bytes; }

swarm_case() {
  local size_mib=$1 n=$2 rate=$3 delay=$4
  LAB_WORK=$(mktemp -d)
  "$NETLAB" up --public $((n + 1)) --nat 0 --rate "$rate" --delay "$delay" >/dev/null
  mkdir -p "$LAB_WORK/pub/docs" "$LAB_WORK/pub/empty"
  head -c $((size_mib << 20)) /dev/urandom > "$LAB_WORK/pub/data.bin"
  echo "hello" > "$LAB_WORK/pub/docs/readme.txt"
  TREE_BYTES=$((size_mib << 20))

  "$NETLAB" exec pub1 -- "$BIN" publish "$LAB_WORK/pub" --listen 0.0.0.0:4433 --no-watch \
    > "$LAB_WORK/ticket" 2> "$LAB_WORK/pub.log" &
  for _ in $(seq 1 600); do [ -s "$LAB_WORK/ticket" ] && break; sleep 0.1; done
  [ -s "$LAB_WORK/ticket" ] || { cat "$LAB_WORK/pub.log"; return 1; }
  local ticket tx0 start
  ticket=$(cat "$LAB_WORK/ticket")
  tx0=$(tx_bytes pub1)
  start=$(date +%s.%N)
  local pids=()
  for i in $(seq 2 $((n + 1))); do
    ( timeout 600 "$NETLAB" exec "pub$i" -- "$BIN" subscribe "$ticket" "$LAB_WORK/sub$i" --once \
        --listen 0.0.0.0:4433 --connect-timeout 60 2> "$LAB_WORK/sub$i.log" \
      && date +%s.%N > "$LAB_WORK/done$i" ) &
    pids+=($!)
  done
  local failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  PUB_TX=$(( $(tx_bytes pub1) - tx0 ))
  SLOWEST_S=0
  for i in $(seq 2 $((n + 1))); do
    if [ ! -f "$LAB_WORK/done$i" ]; then
      echo "subscriber on pub$i did not complete:"; tail -5 "$LAB_WORK/sub$i.log"; failed=1; continue
    fi
    SLOWEST_S=$(echo "t=$(cat "$LAB_WORK/done$i") - $start; if (t > $SLOWEST_S) t else $SLOWEST_S" | bc -l)
    "$BIN" verify "$LAB_WORK/sub$i" > /dev/null || { echo "sub$i does not verify"; failed=1; }
    diff -r --exclude=.treecast "$LAB_WORK/pub" "$LAB_WORK/sub$i" > /dev/null \
      || { echo "sub$i differs from the publisher"; failed=1; }
  done
  return $failed
}
