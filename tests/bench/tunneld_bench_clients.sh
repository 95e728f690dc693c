# tunneld_bench_clients.sh: the several-clients mode of tunneld_bench (--clients), sourced by it
# once the far end's sshd runs and the 4 KB message is made; not run on its own.
#
# Three clients, each behind its own dynmx-linkemu (--clients-link DELAY_MS:RATE_KBIT, default
# 25:5000: 50 ms RTT, 5 Mbit/s each way), each with a backlog of --clients-backlog spooled
# messages (default 1500), and a fourth client, idle and connected, behind a link of its own. Each
# client logs in with its own key, whose forced command counts what its far end accepted
# (dynmx-test-smtpd --count-file), so that each client's progress is read apart. The fourth
# client's first message is spooled with the backlog, so its session is open (within idle_close)
# when the measured messages come. From daemon start, the script polls the counts; about once a
# second while the three drain it commits one message for the fourth client (dynmx-enqueue) and
# times how long after the commit its far end has it.
# Prints (figures only, no pass/fail): for each of the three, the time until its backlog was
# accepted and its link share (message bytes per second over its link's rate, the SSH handshake
# included); the fourth client's latencies, median and range, in ms and in RTT; the most SSH
# connections and channels dynmxctl status showed per client. TUNNELD_EXTRA and CLIENT_EXTRA apply
# (e.g. TUNNELD_EXTRA='max_channels = 12' to see the cap shared out). The emulator models no slow
# start and no loss: the figures are optimistic.
# Uses from tunneld_bench: BIN, TUNNELD, work, user, msgsize, pids, FAR_END_ARGS, calc.

clients_link=${CLIENTS_LINK:-25:5000}
[[ "$clients_link" =~ ^[0-9]+:[0-9]+$ ]] || { echo "tunneld_bench: --clients-link wants DELAY_MS:RATE_KBIT" >&2; exit 64; }
cl_delay=${clients_link%%:*}
cl_kbit=${clients_link##*:}
cl_backlog=${CLIENTS_BACKLOG:-1500}
cl_rtt=$(calc "2 * $cl_delay / 1000")
sshd_port=$(awk '/^ListenAddress/ { sub(/.*:/, "", $2); print $2 }' "$work/sshd/sshd_config")

# One key and one counting far end per client; one link per client.
: > "$work/sshd/authorized_keys"
: > "$work/known_hosts"
declare -a cl_port
for i in 1 2 3 4; do
  ssh-keygen -q -t ed25519 -N '' -C '' -f "$work/id_c$i"
  install -m 0666 /dev/null "$work/count.c$i"
  echo "command=\"$BIN/dynmx-test-smtpd --discard${FAR_END_ARGS:+ $FAR_END_ARGS} --count-file $work/count.c$i\",restrict $(cut -d' ' -f1,2 "$work/id_c$i.pub")" \
    >> "$work/sshd/authorized_keys"
  "$BIN/dynmx-linkemu" --target "127.0.0.1:$sshd_port" --delay-ms "$cl_delay" \
    --rate-kbit "$cl_kbit" > "$work/linkemu.c$i.out" &
  pids+=("$!")
  for _ in $(seq 100); do grep -q '^listening' "$work/linkemu.c$i.out" && break; sleep 0.05; done
  cl_port[$i]=$(awk '/^listening/ { print $2 }' "$work/linkemu.c$i.out")
  [ -n "${cl_port[$i]}" ] || { echo "tunneld_bench: dynmx-linkemu for c$i did not start" >&2; exit 69; }
  echo "[127.0.0.1]:${cl_port[$i]} $(cut -d' ' -f1,2 "$work/sshd/host_key.pub")" >> "$work/known_hosts"
done
echo "links: one dynmx-linkemu per client, $((2 * cl_delay)) ms RTT, $cl_kbit kbit/s each way (optimistic: no slow start, no loss)"

{
  echo "[spool]"
  echo "dir = \"$work/spool\""
  echo "[tunneld]"
  echo "control_socket = \"$work/ctl.sock\""
  echo "identity = \"$work/id_ed25519\""
  echo "known_hosts = \"$work/known_hosts\""
  echo "sendmail = [\"/bin/false\"]"
  echo "hostname = \"mx.bench\""
  if [ -n "${TUNNELD_EXTRA:-}" ]; then printf "%b\n" "$TUNNELD_EXTRA"; fi
  for i in 1 2 3 4; do
    echo "[[client]]"
    echo "name = \"c$i\""
    echo "host = \"127.0.0.1\""
    echo "port = ${cl_port[$i]}"
    echo "user = \"$user\""
    echo "identity = \"$work/id_c$i\""
    echo "domains = [\"c$i.test\"]"
    if [ -n "${CLIENT_EXTRA:-}" ]; then printf "%b\n" "$CLIENT_EXTRA"; fi
  done
} > "$work/dynmx.toml"
"$TUNNELD" -c "$work/dynmx.toml" --check-config >/dev/null

# The spool's directories, made by the daemon itself (started and stopped again).
"$TUNNELD" -f -c "$work/dynmx.toml" 2>"$work/tunneld-prep.log" &
d=$!
pids+=("$d")
for _ in $(seq 200); do [ -d "$work/spool/incoming" ] && break; sleep 0.05; done
sleep 0.2
kill "$d"; wait "$d" 2>/dev/null || true
for i in 1 2 3 4; do : > "$work/count.c$i"; done

enqueue() {  # $1: client
  "$BIN/dynmx-enqueue" -c "$work/dynmx.toml" -f bench@origin.test --client "$1" -- "bob@$1.test" < "$work/msg"
}
echo "spooling $cl_backlog messages of $msgsize bytes for each of c1, c2, c3 and one for c4..."
spoolers=()
for i in 1 2 3; do
  ( for _ in $(seq "$cl_backlog"); do enqueue "c$i"; done ) &
  spoolers+=("$!")
done
for p in "${spoolers[@]}"; do wait "$p"; done
[ "$(find "$work/spool/incoming" -type f | wc -l)" -eq $((3 * cl_backlog)) ] || {
  echo "tunneld_bench: spooled $(find "$work/spool/incoming" -type f | wc -l), wanted $((3 * cl_backlog))" >&2
  exit 70
}
enqueue c4

count() { local v; v=$(<"$work/count.$1"); echo "${v:-0}"; }

t0=$EPOCHREALTIME
"$TUNNELD" -f -c "$work/dynmx.toml" 2>"$work/tunneld.log" &
d=$!
pids+=("$d")
declare -A done_at most_conns most_chans
lat=()
pending=
next_sample=$(calc "$t0 + 2")
next_status=$t0
most_total=0
while :; do
  now=$EPOCHREALTIME
  kill -0 "$d" 2>/dev/null || { echo "tunneld_bench: daemon died: $(tail -5 "$work/tunneld.log")" >&2; exit 70; }
  left=0
  for i in 1 2 3; do
    if [ -z "${done_at[c$i]:-}" ]; then
      if [ "$(count "c$i")" -ge "$cl_backlog" ]; then done_at[c$i]=$now; else left=$((left + 1)); fi
    fi
  done
  if [ -n "$pending" ]; then
    if [ "$(count c4)" -gt "$pending_base" ]; then
      lat+=("$(calc "$now - $pending")")
      pending=
    fi
  elif [ "$left" -gt 0 ] && awk "BEGIN { exit !($now >= $next_sample) }" && [ "$(count c4)" -ge 1 ]; then
    pending_base=$(count c4)
    enqueue c4
    pending=$EPOCHREALTIME  # committed
    next_sample=$(calc "$pending + 1")
  fi
  if awk "BEGIN { exit !($now >= $next_status) }"; then
    next_status=$(calc "$now + 1")
    st=$("$BIN/dynmxctl" -s "$work/ctl.sock" status 2>/dev/null || true)
    tot=$(sed -n '1s/.*client(s), channels \([0-9]*\).*/\1/p' <<< "$st")
    [ "${tot:-0}" -gt "$most_total" ] && most_total=$tot
    cur=
    while IFS= read -r line; do
      case "$line" in
        "client "*) cur=${line#client }; cur=${cur%%:*} ;;
        *"channels "*", connections "*)
          ch=$(sed 's/.*channels \([0-9]*\), connections \([0-9]*\).*/\1 \2/' <<< "$line")
          [ "${ch% *}" -gt "${most_chans[$cur]:-0}" ] && most_chans[$cur]=${ch% *}
          [ "${ch#* }" -gt "${most_conns[$cur]:-0}" ] && most_conns[$cur]=${ch#* } ;;
      esac
    done <<< "$st"
  fi
  [ "$left" -eq 0 ] && [ -z "$pending" ] && break
  if [ -n "$pending" ]; then sleep 0.002; else sleep 0.05; fi
done
cpu=$(cpu_seconds "$d")
kill "$d"; wait "$d" 2>/dev/null || true

printf '8. three clients with %d spooled %d-byte messages each, a fourth idle and connected, each behind its own %d ms RTT, %d kbit/s link:\n' \
  "$cl_backlog" "$msgsize" "$((2 * cl_delay))" "$cl_kbit"
for i in 1 2 3; do
  t=$(calc "${done_at[c$i]} - $t0")
  printf '   c%d: %d messages accepted in %.2f s: link share %.2f (SSH connections at most %s, channels at most %s)\n' \
    "$i" "$cl_backlog" "$t" "$(calc "$cl_backlog * $msgsize * 8 / ($t * $cl_kbit * 1000)")" \
    "${most_conns[c$i]:-?}" "${most_chans[c$i]:-?}"
done
if [ "${#lat[@]}" -gt 0 ]; then
  sorted=$(printf '%s\n' "${lat[@]}" | sort -n)
  n=${#lat[@]}
  med=$(awk -v n="$n" '{ v[NR] = $1 } END { if (n % 2) print v[(n + 1) / 2]; else print (v[n / 2] + v[n / 2 + 1]) / 2 }' <<< "$sorted")
  printf '   c4: %d messages committed while the others drained, accepted at its far end after: median %.0f ms = %.2f RTT (min %.0f ms, max %.0f ms)\n' \
    "$n" "$(calc "$med * 1000")" "$(calc "$med / $cl_rtt")" \
    "$(calc "$(head -1 <<< "$sorted") * 1000")" "$(calc "$(tail -1 <<< "$sorted") * 1000")"
else
  echo "   c4: no message measured (the others drained before the first sample)"
fi
printf '   channels of all clients at most %s (dynmxctl status, sampled once a second); daemon CPU %.2f s; load average %s\n' \
  "$most_total" "$cpu" "$(cut -d' ' -f1-3 /proc/loadavg)"
