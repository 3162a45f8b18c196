# Sourced by the benchmark scripts: real `consort node` processes (TLS gRPC on loopback).
# Needs $bin (the consort binary). Node PIDs go to the array `pids` (in start order);
# `stop_nodes` ends them (call it from the script's EXIT trap).
pids=()

# start_nodes DIR NAME...: `consort init` and `consort node` for each DIR/NAME, then waits until
# each node's control socket and listen address exist. Node logs go to DIR/NAME.log.
start_nodes() {
  local dir=$1 n
  shift
  for n in "$@"; do
    "$bin" init "$dir/$n" --name "$n" --listen 127.0.0.1:0 >/dev/null
    "$bin" node "$dir/$n" 2>"$dir/$n.log" &
    pids+=($!)
  done
  for n in "$@"; do
    for _ in $(seq 100); do [ -S "$dir/$n/control.sock" ] && [ -s "$dir/$n/listen.addr" ] && break; sleep 0.1; done
  done
}

# pin_pair DIR A B: nodes A and B pin each other (address and certificate).
pin_pair() {
  local dir=$1 a=$2 b=$3
  "$bin" peer add "$dir/$a" --name "$b" --addr "$(cat "$dir/$b/listen.addr")" --cert "$dir/$b/node.crt" >/dev/null
  "$bin" peer add "$dir/$b" --name "$a" --addr "$(cat "$dir/$a/listen.addr")" --cert "$dir/$a/node.crt" >/dev/null
}

stop_nodes() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

# node_cpu: the CPU seconds (user + system) each started node has used so far, space-separated
# in start order (from /proc/PID/stat, in clock ticks of `getconf CLK_TCK`).
node_cpu() {
  local p hz out=()
  hz=$(getconf CLK_TCK)
  for p in "${pids[@]}"; do
    out+=("$(awk -v hz="$hz" '{ printf "%.2f", ($14 + $15) / hz }' /proc/"$p"/stat)")
  done
  echo "${out[*]}"
}
