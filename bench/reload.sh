#!/usr/bin/env bash
# Config reloads under load (issue 15): wrk -t2 -c64 against Gatehouse's signed-in route over
# TLS, first without reloads (baseline), then with RELOADS config saves spread over the run, the
# way an operator saves the file: alternately rewritten in place and written beside it and
# renamed over it (Gatehouse watches the config's directory with inotify for close-after-write
# and moves, waits 200 ms for the writes to settle, and reloads; SIGHUP is not used here). Each
# save changes a comment and max_connections_per_client (512/513, harmless at 64 connections).
# Gatehouse's log must show one "config reloaded" per save. A bench, not a test: it prints
# PASS/FAIL against issue 15's target:
#   no failed request (wrk's non-2xx/3xx and socket errors, and any response that did not come
#   from the upstream: the upstream's request counter must cover every request wrk completed)
#   and p99 with reloads <= 2 x p99 without
#
#   bench/reload.sh                                   # DURATION=30 RELOADS=20, builds the binary
#   SKIP_BUILD=1 DURATION=10 bench/reload.sh
#   flock /tmp/gatehouse-bench.lock env SKIP_BUILD=1 bench/reload.sh
#
# Env: DURATION (30) seconds per wrk run; RELOADS (20) saves per reload run; ROUNDS (1) pairs of
#      runs (baseline, reloads), medians of p99 when more; WARMUP (3) seconds of wrk first;
#      THREADS (2) Gatehouse --threads; SKIP_BUILD, GATEHOUSE_BIN, KEEP_WORK.
# Exit: 0 the target met, 3 missed, 1 the bench could not run. Loopback only; stops every
# process it started (by PID) and removes its temp dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION="${DURATION:-30}"
RELOADS="${RELOADS:-20}"
ROUNDS="${ROUNDS:-1}"
WARMUP="${WARMUP:-3}"
for v in DURATION RELOADS ROUNDS WARMUP; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "reload.sh: $v must be a positive integer" >&2; exit 1; }
done
# A save every DURATION/(RELOADS+1) s; each must be at least the watcher's 200 ms settle apart.
awk -v d="$DURATION" -v r="$RELOADS" 'BEGIN { exit !(d / (r + 1) >= 0.4) }' ||
  { echo "reload.sh: DURATION/(RELOADS+1) must be at least 0.4 s" >&2; exit 1; }
# shellcheck source=bench/common.sh
. bench/common.sh

bench_tools
read -r P_UP P_UPSTAT P_IDP P_GH < <(free_ports 4)
bench_certs
start_upstream "$P_UP" "$P_UPSTAT"
start_idp "$P_IDP" "$P_GH"
extra() { # SAVE_NUMBER : the top-level lines a save changes
  printf '# saved by bench/reload.sh, save %s\nmax_connections_per_client: %s' "$1" $((512 + $1 % 2))
}
start_gatehouse "$P_GH" "$P_UP" "$(extra 0)"
sign_in "$P_GH"
CONF="$GH/gatehouse.yaml"
GLOG="$GH/gatehouse.log"

save() { # NUMBER : odd in place (one close-after-write), even written aside and renamed over
  if (($1 % 2)); then
    gatehouse_yaml "$P_GH" "$P_UP" "$(extra "$1")" >"$CONF"
  else
    gatehouse_yaml "$P_GH" "$P_UP" "$(extra "$1")" >"$GH/.gatehouse.yaml.new"
    mv -f "$GH/.gatehouse.yaml.new" "$CONF"
  fi
}
upstream_requests() { # the upstream's stub_status request counter, without this read itself
  curl -s --max-time 5 "http://127.0.0.1:$P_UPSTAT/" | awk 'NR == 3 { print $3 }'
}
to_ms() { # 2.08ms / 950.00us / 1.20s -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.2f", n }'
}
reloaded() { grep -c 'config reloaded' "$GLOG" || true; }

ROWS="$WORK/rows"
: >"$ROWS"
SAVES=0
run() { # KIND LABEL SECONDS SAVES : one wrk run, SAVES config saves spread over it
  local kind="$1" label="$2" secs="$3" n="$4" out="$WORK/wrk-$1-$SECONDS.txt" t0 u0 u1 r0 r1 pid i
  u0="$(upstream_requests)"
  r0="$(reloaded)"
  t0="$(date +%s.%N)"
  start WRK "$out" wrk -t2 -c64 -d"${secs}s" --latency -H "Host: assistant.localhost:$P_GH" -H "Cookie: $COOKIE" \
    "https://127.0.0.1:$P_GH/"
  pid="$PID_WRK"
  for ((i = 1; i <= n; i++)); do
    # the i-th save at secs * i / (n + 1) after the start
    sleep "$(awk -v t0="$t0" -v now="$(date +%s.%N)" -v w="$(awk -v d="$secs" -v r="$n" -v i="$i" 'BEGIN { print d * i / (r + 1) }')" \
      'BEGIN { d = t0 + w - now; printf "%.3f", (d > 0 ? d : 0) }')"
    SAVES=$((SAVES + 1))
    save "$SAVES"
  done
  forget_pid "$pid" || { cat "$out" >&2; die "wrk failed ($label)"; }
  sleep 0.5 # the last save's reload
  u1="$(upstream_requests)"
  r1="$(reloaded)"
  local reqs rps p50 p99 non2xx sockerr missing
  reqs="$(awk '/requests in/ { print $1 }' "$out")"
  rps="$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")"
  p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
  p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
  non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")"
  sockerr="$(awk -F'[ ,]+' '/Socket errors:/ { print $4 + $6 + $8 + $10 }' "$out")"
  [[ -n "$reqs" && -n "$rps" ]] || { cat "$out" >&2; die "could not read wrk's output ($label)"; }
  missing=$((reqs - (u1 - u0 - 1)))
  ((missing > 0)) || missing=0
  printf '%-12s %6s req/s  p50 %6s ms  p99 %6s ms  requests %7s  non-2xx %s  socket errors %s  not from the upstream %s  reloads %s/%s\n' \
    "$label" "$rps" "$p50" "$p99" "$reqs" "${non2xx:-0}" "${sockerr:-0}" "$missing" $((r1 - r0)) "$n"
  echo "$kind $p99 $((${non2xx:-0} + ${sockerr:-0} + missing)) $((r1 - r0)) $n" >>"$ROWS"
}

log "warm-up ${WARMUP} s"
run warm-up warm-up "$WARMUP" 0 >/dev/null
log "measuring: ${ROUNDS} round(s) of ${DURATION} s without, then with ${RELOADS} reloads"
for ((r = 1; r <= ROUNDS; r++)); do
  run base "no reloads" "$DURATION" 0
  run reload "$RELOADS reloads" "$DURATION" "$RELOADS"
done

failed_reloads="$(grep -c 'config reload failed' "$GLOG" || true)"
restart_only="$(grep -c 'take effect only after a restart' "$GLOG" || true)"
awk -v failed_reloads="$failed_reloads" -v restart_only="$restart_only" '
  function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  $1 == "base" { b[++nb] = $2; fails += $3 }
  $1 == "reload" { w[++nw] = $2; wfails += $3; got += $4; want += $5 }
  END {
    pb = median(b, nb); pw = median(w, nw); ratio = pw / pb
    printf "\nreloads: %d of %d saves reloaded (Gatehouse log: \"config reloaded\"), %d failed, %d restart-only warnings\n", got, want, failed_reloads, restart_only
    printf "failed requests: %d with reloads, %d without\n", wfails, fails
    printf "p99: %.2f ms without reloads, %.2f ms with; ratio %.2f (target <= 2.00)\n", pb, pw, ratio
    ok = wfails == 0 && fails == 0 && ratio <= 2 && got == want && failed_reloads == 0
    printf "%s: %s\n", ok ? "PASS" : "FAIL", ok ? "no failed request, p99 within 2x" : "see above"
    exit ok ? 0 : 3
  }' "$ROWS"
