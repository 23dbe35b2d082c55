#!/usr/bin/env bash
# Benchmarks keygate against nginx doing the same work on this machine.
#
# Usage: bench/run.sh [--smoke] [--duration SECONDS] [--repetitions N] [SECTION ...]
# Sections: keepalive close auth_request proxy resources keys (default: all).
#
# The systems under test are interleaved in every repetition (nginx, keygate,
# nginx, keygate, ...) because a shared machine drifts. The summary reports
# the median with the min-max range. Results go to bench/results/ as TSV and
# Markdown. --smoke runs every section briefly to keep the harness working.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
duration=5
repetitions=3
smoke=0
sections=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1; duration=1; repetitions=1 ;;
    --duration) duration=$2; shift ;;
    --repetitions) repetitions=$2; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    -*) echo "bench/run.sh: unknown option $1; see --help" >&2; exit 2 ;;
    *) sections+=("$1") ;;
  esac
  shift
done
[ ${#sections[@]} -gt 0 ] || sections=(keepalive close auth_request proxy resources keys)

# wrk runs one thread: it shares the two cores with the server, and one
# event-loop thread is enough to saturate either system here.
wrk_threads=1
key=bench-key-0123456789abcdef0123456789abcdef
wrong_key=bench-key-0123456789abcdef0123456789abcdeF
# Fixed ports below Linux's default ephemeral range (32768-60999), so that
# client connections from earlier sections cannot hold one of them.
port_nginx=29101
port_keygate=29102
port_admin=29103
port_front=29104
port_static=29105
port_alone=29106
port_proxy=29107
port_front_nginx=29108

for tool in wrk nginx python3 curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing $tool"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light python3 curl >/dev/null
    break
  fi
done

(cd "$root" && cargo build --release --locked -q)
keygate_bin=$root/target/release/keygate

work=$(mktemp -d /tmp/keygate-bench.XXXXXX)
mkdir -p "$work/tmp" "$work/static" "$root/bench/results"
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
results=$root/bench/results/$stamp.tsv
printf 'section\tsystem\tconnections\tcase\trepetition\trps\tp50_us\tp99_us\tmax_us\tcpu_us_per_request\n' >"$results"
printf '%s\n' "$key" >"$work/keys"
chmod 600 "$work/keys"
head -c 1024 /dev/urandom | base64 >"$work/static/small.txt"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

wait_for_file() {
  for _ in $(seq 100); do
    [ -s "$1" ] && return 0
    sleep 0.05
  done
  echo "bench/run.sh: $1 was not written" >&2
  return 1
}

wait_for_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench/run.sh: nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# Writes an nginx config whose server blocks are given on stdin, and starts it.
start_nginx() {
  local name=$1
  {
    cat <<EOF
worker_processes auto;
daemon off;
master_process on;
pid $work/nginx-$name.pid;
error_log $work/nginx-$name.error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/tmp/body;
  proxy_temp_path $work/tmp/proxy;
  fastcgi_temp_path $work/tmp/fastcgi;
  uwsgi_temp_path $work/tmp/uwsgi;
  scgi_temp_path $work/tmp/scgi;
EOF
    cat
    echo "}"
  } >"$work/nginx-$name.conf"
  nginx -c "$work/nginx-$name.conf" &
  pids+=($!)
}

start_keygate() {
  RUST_LOG=warn "$keygate_bin" --key-file "${1:-$work/keys}" --listen "127.0.0.1:$port_keygate" \
    --admin-listen "127.0.0.1:$port_admin" "${@:2}" 2>>"$work/keygate.log" &
  keygate_pid=$!
  pids+=($keygate_pid)
  wait_for_port "$port_keygate"
}

stop_keygate() {
  kill "$keygate_pid" 2>/dev/null || true
  wait "$keygate_pid" 2>/dev/null || true
}

# Prints the CPU time (user + system) in clock ticks of the given processes.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# Prints the processes of a system under test: keygate, or an nginx master and its workers.
system_pids() {
  case "$1" in
    keygate*) echo "$keygate_pid" ;;
    *)
      local master
      master=$(cat "$work/nginx-$2.pid")
      echo "$master $(pgrep -P "$master" | tr '\n' ' ')"
      ;;
  esac
}

# Runs wrk and appends one result row.
measure() {
  local section=$1 system=$2 connections=$3 case=$4 repetition=$5 url=$6 pid_list=$7
  shift 7
  local before after line ticks_per_second
  ticks_per_second=$(getconf CLK_TCK)
  before=$(cpu_ticks $pid_list)
  line=$(wrk -t"$wrk_threads" -c"$connections" -d"${duration}s" --latency -s "$root/bench/report.lua" "$@" "$url" | grep '^RESULT')
  after=$(cpu_ticks $pid_list)
  local rps p50 p99 max requests
  rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$line")
  p50=$(sed -E 's/.*p50=([0-9]+).*/\1/' <<<"$line")
  p99=$(sed -E 's/.*p99=([0-9]+).*/\1/' <<<"$line")
  max=$(sed -E 's/.*max=([0-9]+).*/\1/' <<<"$line")
  requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  local cpu
  cpu=$(python3 -c "print(round(($after - $before) / $ticks_per_second * 1e6 / max($requests, 1), 2))")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$system" "$connections" "$case" "$repetition" \
    "$rps" "$p50" "$p99" "$max" "$cpu" >>"$results"
  log "$section $system c=$connections $case #$repetition: $rps req/s, p50 ${p50}us, p99 ${p99}us, cpu ${cpu}us/req"
}

decision_server() {
  start_nginx decide <<EOF
  server {
    listen 127.0.0.1:$port_nginx;
    location / {
      # A case-sensitive comparison; map with plain strings would ignore case.
      if (\$http_authorization = "Bearer $key") { return 200; }
      return 401;
    }
  }
EOF
  wait_for_port "$port_nginx"
  wait_for_file "$work/nginx-decide.pid"
}

run_decisions() {
  local section=$1 connection_list=$2
  shift 2
  for connections in $connection_list; do
    for case in valid invalid; do
      local header="Authorization: Bearer $key"
      [ "$case" = valid ] || header="Authorization: Bearer $wrong_key"
      for repetition in $(seq "$repetitions"); do
        measure "$section" nginx "$connections" "$case" "$repetition" "http://127.0.0.1:$port_nginx/" \
          "$(system_pids nginx decide)" -H "$header" "$@"
        measure "$section" keygate "$connections" "$case" "$repetition" "http://127.0.0.1:$port_keygate/" \
          "$(system_pids keygate)" -H "$header" "$@"
      done
    done
  done
}

section_keepalive() {
  run_decisions keepalive "1 16 64 256"
}

section_close() {
  # 256 connections with Connection: close would exhaust ephemeral ports in TIME_WAIT.
  run_decisions close "1 16 64" -H "Connection: close"
}

section_auth_request() {
  # Both servers respond with the same small file. `return` would run before
  # the access phase and skip auth_request, so the content comes from try_files.
  start_nginx front <<EOF
  upstream keygate { server 127.0.0.1:$port_keygate; keepalive 64; }
  server {
    listen 127.0.0.1:$port_front;
    root $work/static;
    location = /_auth {
      internal;
      proxy_pass http://keygate;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }
    location / { auth_request /_auth; try_files /small.txt =404; }
  }
  # The same front with nginx itself as the auth server, for comparison.
  upstream nginx_decision { server 127.0.0.1:$port_nginx; keepalive 64; }
  server {
    listen 127.0.0.1:$port_front_nginx;
    root $work/static;
    location = /_auth {
      internal;
      proxy_pass http://nginx_decision;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }
    location / { auth_request /_auth; try_files /small.txt =404; }
  }
  server {
    listen 127.0.0.1:$port_alone;
    root $work/static;
    location / {
      if (\$http_authorization != "Bearer $key") { return 401; }
      try_files /small.txt =404;
    }
  }
EOF
  wait_for_port "$port_front"
  wait_for_port "$port_alone"
  wait_for_file "$work/nginx-front.pid"
  for connections in 1 16 64; do
    for repetition in $(seq "$repetitions"); do
      measure auth_request nginx-alone "$connections" valid "$repetition" "http://127.0.0.1:$port_alone/" \
        "$(system_pids nginx front)" -H "Authorization: Bearer $key"
      measure auth_request nginx+nginx-auth "$connections" valid "$repetition" "http://127.0.0.1:$port_front_nginx/" \
        "$(system_pids nginx front) $(system_pids nginx decide)" -H "Authorization: Bearer $key"
      measure auth_request nginx+keygate "$connections" valid "$repetition" "http://127.0.0.1:$port_front/" \
        "$(system_pids nginx front) $keygate_pid" -H "Authorization: Bearer $key"
    done
  done
}

section_proxy() {
  start_nginx static <<EOF
  upstream static { server 127.0.0.1:$port_static; keepalive 64; }
  server { listen 127.0.0.1:$port_static; root $work/static; }
  server {
    listen 127.0.0.1:$port_proxy;
    location / { proxy_pass http://static; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
EOF
  wait_for_port "$port_static"
  wait_for_file "$work/nginx-static.pid"
  stop_keygate
  # As many idle upstream connections as nginx keeps for proxy_pass above.
  start_keygate "$work/keys" --upstream "http://127.0.0.1:$port_static" --upstream-max-idle 64
  for connections in 1 16 64; do
    for repetition in $(seq "$repetitions"); do
      measure proxy direct "$connections" small "$repetition" "http://127.0.0.1:$port_static/small.txt" \
        "$(system_pids nginx static)" -H "Authorization: Bearer $key"
      measure proxy nginx-proxy_pass "$connections" small "$repetition" "http://127.0.0.1:$port_proxy/small.txt" \
        "$(system_pids nginx static)" -H "Authorization: Bearer $key"
      measure proxy keygate-proxy "$connections" small "$repetition" "http://127.0.0.1:$port_keygate/small.txt" \
        "$(system_pids nginx static) $keygate_pid" -H "Authorization: Bearer $key"
    done
  done
  stop_keygate
  start_keygate
}

# Prints "rss_kib threads" summed over the given processes.
footprint() {
  local rss=0 threads=0 pid
  for pid in "$@"; do
    [ -r "/proc/$pid/status" ] || continue
    rss=$((rss + $(awk '/^VmRSS/{print $2}' "/proc/$pid/status")))
    threads=$((threads + $(awk '/^Threads/{print $2}' "/proc/$pid/status")))
  done
  echo "$rss $threads"
}

section_resources() {
  local out=$root/bench/results/$stamp-resources.tsv
  printf 'system\tstate\trss_kib\tthreads\n' >"$out"
  stop_keygate
  start_keygate
  printf 'keygate\tfresh\t%s\t%s\n' $(footprint "$keygate_pid") >>"$out"
  printf 'nginx\tfresh\t%s\t%s\n' $(footprint $(system_pids nginx decide)) >>"$out"
  local hold=$((smoke ? 1 : 3))
  for count in 1 1000; do
    for system in nginx keygate; do
      local port=$port_nginx pid_list
      [ "$system" = keygate ] && port=$port_keygate
      pid_list=$(system_pids "$system" decide)
      python3 - "$port" "$count" "$hold" "$key" >"$work/idle.out" <<'EOF' &
import socket, sys, time
port, count, hold, key = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sockets = []
for _ in range(count):
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(f"GET / HTTP/1.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    connection.recv(4096)
    sockets.append(connection)
print("ready", flush=True)
time.sleep(hold)
EOF
      local client=$!
      for _ in $(seq 200); do grep -q ready "$work/idle.out" 2>/dev/null && break; sleep 0.05; done
      printf '%s\t%s idle keep-alive\t%s\t%s\n' "$system" "$count" $(footprint $pid_list) >>"$out"
      wait "$client"
    done
  done
  log "resources: $(tr '\t' ' ' <"$out" | tail -n +2 | paste -sd ';')"
}

section_keys() {
  for count in 1 1000 100000; do
    python3 - "$count" "$key" >"$work/keys-$count" <<'EOF'
import secrets, sys
count, key = int(sys.argv[1]), sys.argv[2]
print(key)
for _ in range(count - 1):
    print(secrets.token_hex(24))
EOF
    stop_keygate
    # 100,000 keys of 48 bytes take about 4.9 MB, more than the 1 MiB default.
    start_keygate "$work/keys-$count" --max-key-file-bytes 16777216
    for repetition in $(seq "$repetitions"); do
      measure keys "keygate-$count-keys" 16 valid "$repetition" "http://127.0.0.1:$port_keygate/" \
        "$keygate_pid" -H "Authorization: Bearer $key"
    done
  done

  # Reload cost and request stalls while a 100,000-key file is swapped.
  python3 - 100000 "$key" >"$work/keys-swap" <<'EOF'
import secrets, sys
print(sys.argv[2])
for _ in range(int(sys.argv[1]) - 1):
    print(secrets.token_hex(24))
EOF
  stop_keygate
  : >"$work/keygate.log"
  cp "$work/keys-100000" "$work/keys-live"
  RUST_LOG=info "$keygate_bin" --key-file "$work/keys-live" --listen "127.0.0.1:$port_keygate" --admin-listen off \
    --max-key-file-bytes 16777216 2>>"$work/keygate.log" &
  keygate_pid=$!
  pids+=($keygate_pid)
  wait_for_port "$port_keygate"
  local swaps=$((smoke ? 1 : 5))
  (
    for index in $(seq "$swaps"); do
      sleep 1
      if [ $((index % 2)) -eq 1 ]; then cp "$work/keys-swap" "$work/keys-live.new"; else cp "$work/keys-100000" "$work/keys-live.new"; fi
      mv "$work/keys-live.new" "$work/keys-live"
      kill -HUP "$keygate_pid"
    done
  ) &
  local swapper=$!
  local saved_duration=$duration
  duration=$((swaps + 2))
  measure keys keygate-100000-swapping 16 valid 1 "http://127.0.0.1:$port_keygate/" "$keygate_pid" \
    -H "Authorization: Bearer $key"
  duration=$saved_duration
  wait "$swapper"
  grep -o 'reloaded key file [^ ]* in [^:]*' "$work/keygate.log" | sed 's/.* in /reload /' >"$root/bench/results/$stamp-reloads.txt" || true
  log "keys: reload times: $(paste -sd ' ' "$root/bench/results/$stamp-reloads.txt")"
  stop_keygate
  start_keygate
}

log "keygate $("$keygate_bin" --version), $(nginx -v 2>&1), wrk -t$wrk_threads, ${duration}s per point, $repetitions repetitions"
decision_server
start_keygate
for section in "${sections[@]}"; do
  case "$section" in
    keepalive|close|auth_request|proxy|resources|keys) "section_$section" ;;
    *) echo "bench/run.sh: unknown section $section" >&2; exit 2 ;;
  esac
done

python3 "$root/bench/summarize.py" "$results" | tee "$root/bench/results/$stamp.md"
