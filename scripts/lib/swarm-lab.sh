# Shared by scripts/lab-tests and scripts/bench-swarm: one publisher and N subscribers on public
# hosts of a netlab lab with shaped links. Sourced, not run.
#
# swarm_case SIZE_MIB N RATE DELAY  runs the case and sets:
#   SLOWEST_S   completion time of the slowest subscriber (s, from its start)
#   PUB_TX      bytes the publisher host sent on its interface during the run
#   TREE_BYTES  size of the published tree
#   TIMES_S     every subscriber's completion time (s, sorted)
#   $LAB_WORK/pub-tx  sampled every 2 s: "secs publisher-tx-bytes sub2-bytes-on-disk ..."
# The tree is one file of SIZE_MIB plus SMALL (env, default 0) files of 40,000 bytes.
# It fails (returns non-zero) if any subscriber does not complete or verify. KEEP=1 keeps the
# logs and trees.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NETLAB=${NETLAB:-$REPO/../shared/scripts/netlab}
BIN=${BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/treecast}
export NETLAB_PREFIX=${NETLAB_PREFIX:-tc$$-}
# The lab has no route to the public DHT's bootstrap peers: keep nodes from trying (the amino_*
# cases of lab-tests turn it on for theirs, pointed at the lab's own nodes).
export TREECAST_NO_PUBLIC_DHT=${TREECAST_NO_PUBLIC_DHT-1}

# The kernel keeps one ARP table for all network namespaces, and its default limits
# (net.ipv4.neigh.default.gc_thresh1/2/3 = 128/512/1024 entries) are below what a big lab needs:
# 41 hosts that each resolve the others make ~1,700 entries. Over the hard limit the kernel logs
# "neighbor table overflow" and creates no entry: a host that comes late resolves nobody, every
# datagram it sends is dropped (UdpSndbufErrors), its dials time out and it never joins (the CI
# failure of swarm_40_subscribers_64mib). Raise the limits for the run; lab_neigh_restore puts
# them back.
# Only limits this process raised are put back ("N:old" entries), and not while another lab's
# namespaces are up (the limits are global: putting them back would overflow the other lab; they
# stay raised then, which costs nothing). A failed write is not fatal: this runs while sourced.
NEIGH_SAVED=""
lab_neigh_grow() {
  local i want=(4096 8192 16384) f cur
  for i in 1 2 3; do
    f=/proc/sys/net/ipv4/neigh/default/gc_thresh$i
    [ -w "$f" ] || return 0
    cur=$(cat "$f")
    if [ "$cur" -lt "${want[$((i - 1))]}" ] && echo "${want[$((i - 1))]}" 2>/dev/null > "$f"; then
      NEIGH_SAVED="$NEIGH_SAVED $i:$cur"
    fi
  done
  return 0
}
lab_neigh_restore() {
  local e
  if ip netns list 2>/dev/null | grep -q .; then NEIGH_SAVED=""; return 0; fi
  for e in $NEIGH_SAVED; do
    echo "${e#*:}" > "/proc/sys/net/ipv4/neigh/default/gc_thresh${e%%:*}" 2>/dev/null || true
  done
  NEIGH_SAVED=""
}
lab_neigh_grow

lab_cleanup() {
  "$NETLAB" down >/dev/null 2>&1 || true
  if [ -n "${LAB_WORK:-}" ] && [ "${KEEP:-0}" = 1 ]; then
    echo "KEEP=1: logs and trees left in $LAB_WORK" >&2
  elif [ -n "${LAB_WORK:-}" ]; then
    rm -rf "$LAB_WORK"
  fi
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
  if [ "${SMALL:-0}" -gt 0 ]; then
    mkdir -p "$LAB_WORK/pub/small"
    for i in $(seq 1 "$SMALL"); do head -c 40000 /dev/urandom > "$LAB_WORK/pub/small/f$i"; done
    TREE_BYTES=$((TREE_BYTES + SMALL * 40000))
  fi

  "$NETLAB" exec pub1 -- "$BIN" publish "$LAB_WORK/pub" --listen 0.0.0.0:4433 --no-watch \
    --metrics 127.0.0.1:9898 \
    > "$LAB_WORK/ticket" 2> "$LAB_WORK/pub.log" &
  for _ in $(seq 1 600); do [ -s "$LAB_WORK/ticket" ] && break; sleep 0.1; done
  [ -s "$LAB_WORK/ticket" ] || { cat "$LAB_WORK/pub.log"; return 1; }
  local ticket tx0 start
  ticket=$(cat "$LAB_WORK/ticket")
  tx0=$(tx_bytes pub1)
  start=$(date +%s.%N)
  # Cheap on purpose: at 40 subscribers a process per subscriber per sample (and a grep of each
  # log five times a second below) took about a tenth of this 2-core machine (perf).
  local subs=()
  for i in $(seq 2 $((n + 1))); do subs+=("$LAB_WORK/sub$i"); done
  ( while sleep 2; do
      line="$(echo "$(date +%s.%N) - $start" | bc -l) $(( $(tx_bytes pub1) - tx0 ))"
      line="$line $(du -s -B1 "${subs[@]}" 2>/dev/null | cut -f1 | tr '\n' ' ')"
      echo "$line"
    done > "$LAB_WORK/pub-tx" 2>/dev/null ) &
  local sampler=$!
  # Subscribers run as the daemons they are in use (no --once): one that has its copy keeps
  # serving the others, as the lower bound assumes. A subscriber is done when it logs that it
  # applied the revision.
  local pids=()
  for i in $(seq 2 $((n + 1))); do
    timeout 600 "$NETLAB" exec "pub$i" -- "$BIN" subscribe "$ticket" "$LAB_WORK/sub$i" \
      --listen 0.0.0.0:4433 --connect-timeout 60 2> "$LAB_WORK/sub$i.log" &
    pids+=($!)
  done
  local deadline=$(( $(date +%s) + 600 )) left=$n
  while [ "$left" -gt 0 ] && [ "$(date +%s)" -lt "$deadline" ]; do
    local now applied
    now=$(date +%s.%N)
    applied=$(grep -l "revision applied" "$LAB_WORK"/sub*.log 2>/dev/null || true)
    left=0
    for i in $(seq 2 $((n + 1))); do
      [ -f "$LAB_WORK/done$i" ] && continue
      if [[ $'\n'$applied$'\n' == *$'\n'"$LAB_WORK/sub$i.log"$'\n'* ]]; then
        echo "$now" > "$LAB_WORK/done$i"
      else
        left=$((left + 1))
      fi
    done
    sleep 0.2
  done
  PUB_TX=$(( $(tx_bytes pub1) - tx0 ))
  # The chunk bytes it sent, from its own counters: the rest of PUB_TX is QUIC (headers,
  # acknowledgements, retransmissions), control messages and chunks cut off midway.
  PUB_CHUNK_BYTES=$("$NETLAB" exec pub1 -- curl -s 127.0.0.1:9898/metrics |
    awk '/^treecast_chunk_bytes_total\{direction="up"/ {s += $2} END {printf "%d", s}') || true
  # Requests the publisher refused under its upload budget (0 unless one is set).
  PUB_REFUSED_BUSY=$("$NETLAB" exec pub1 -- curl -s 127.0.0.1:9898/metrics |
    awk '/^treecast_chunks_refused_busy_total / {printf "%d", $2}') || true
  SUBS_REFUSED_BUSY=0
  for i in $(seq 2 $((n + 1))); do
    local r
    r=$(timeout 10 "$BIN" status --json "$LAB_WORK/sub$i" 2>/dev/null | jq -r '.counters.chunks_refused_busy // 0') || r=0
    SUBS_REFUSED_BUSY=$((SUBS_REFUSED_BUSY + ${r:-0}))
  done
  kill "$sampler" 2>/dev/null || true
  # Before stopping anyone: a daemon that exited on its own is a defect even if it had applied
  # the revision, and a subscriber still short of it shows what it is waiting for.
  local failed=0 k=0
  for i in $(seq 2 $((n + 1))); do
    if ! kill -0 "${pids[$k]}" 2>/dev/null; then
      echo "subscriber on pub$i exited before it was stopped:"; tail -5 "$LAB_WORK/sub$i.log"
      failed=1
    elif [ ! -f "$LAB_WORK/done$i" ]; then
      echo "subscriber on pub$i did not complete; its status:"
      { timeout 10 "$BIN" status "$LAB_WORK/sub$i" 2>&1 | sed 's/^/    /'; } || true
      echo "  its warnings:"; { grep -E " (WARN|ERROR) " "$LAB_WORK/sub$i.log" | tail -15; } || true
    fi
    k=$((k + 1))
  done
  if [ "${left:-0}" -gt 0 ]; then
    echo "publisher's status:"; { timeout 10 "$BIN" status "$LAB_WORK/pub" 2>&1 | sed 's/^/    /'; } || true
  fi
  # Stop the subscribers the way a user does (SIGTERM: a clean shutdown), then check.
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  SLOWEST_S=0
  TIMES_S=""
  for i in $(seq 2 $((n + 1))); do
    if [ ! -f "$LAB_WORK/done$i" ]; then
      echo "subscriber on pub$i did not complete; the end of its log:"
      tail -30 "$LAB_WORK/sub$i.log" | cut -c1-400; failed=1; continue
    fi
    local t
    t=$(echo "$(cat "$LAB_WORK/done$i") - $start" | bc -l)
    TIMES_S="$TIMES_S $(printf '%.1f' "$t")"
    SLOWEST_S=$(echo "if ($t > $SLOWEST_S) $t else $SLOWEST_S" | bc -l)
    "$BIN" verify "$LAB_WORK/sub$i" > /dev/null || { echo "sub$i does not verify"; failed=1; }
    diff -r --exclude=.treecast "$LAB_WORK/pub" "$LAB_WORK/sub$i" > /dev/null \
      || { echo "sub$i differs from the publisher"; failed=1; }
  done
  TIMES_S=$(echo "$TIMES_S" | tr ' ' '\n' | sed '/^$/d' | sort -n | tr '\n' ' ')
  [ "$failed" = 0 ] || echo "  completion times of the others (s): $TIMES_S"
  return $failed
}

# swarm_bound RATE_MBIT N: the lower bound (s) on the slowest completion when every host has
# the same up and down rate U: max(F/U_pub, N*F/(U_pub + N*U), F/D_sub), F = $TREE_BYTES. tbf
# goodput is ~94% of the line rate, which the bound ignores (it is a bound).
swarm_bound() {
  echo "f=$TREE_BYTES; u=$1*1000000/8; n=$2;
    a=f/u; b=n*f/(u + n*u); c=f/u;
    m=a; if (b>m) m=b; if (c>m) m=c; m" | bc -l
}
