#!/usr/bin/env bash
# Stop the daemons started by .ci/slurm/start.sh (by the PIDs it recorded) and remove its state dir.
# Usage (as root):  bash .ci/slurm/stop.sh [STATE_DIR]      (default /tmp/editscale-slurm)
# Set EDITSCALE_SLURM_KEEP=1 to keep the state dir (logs) after stopping.
set -euo pipefail

STATE=$(realpath -m "${1:-/tmp/editscale-slurm}")
say() { echo "slurm/stop.sh: $*"; }

# Cancel this instance's jobs first, so that slurmd/slurmstepd end their processes themselves.
if [ -f "$STATE/etc/slurm.conf" ] && command -v squeue >/dev/null 2>&1; then
  export SLURM_CONF="$STATE/etc/slurm.conf"
  mapfile -t jobs < <(timeout 10 squeue -h -o %A -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING 2>/dev/null || true)
  if [ "${#jobs[@]}" -gt 0 ]; then
    say "cancelling jobs: ${jobs[*]}"
    timeout 10 scancel "${jobs[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
      [ -z "$(timeout 5 squeue -h -o %A -t RUNNING,COMPLETING,CONFIGURING 2>/dev/null || true)" ] && break
      sleep 0.1
    done
  fi
fi

# wait_gone N: wait up to N tenths of a second for every PID in pids to exit.
wait_gone() {
  local _ p alive
  for _ in $(seq "$1"); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
}

if [ -f "$STATE/pids" ]; then
  names=(); pids=()
  while read -r name pid; do
    [ -n "${pid:-}" ] || continue
    names+=("$name"); pids+=("$pid")
  done <"$STATE/pids"
  # SIGTERM to all (slurmd, slurmctld, munged), wait up to 10 s, then SIGKILL what is left.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait_gone 100
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      say "${names[i]} (${pids[i]}) still alive after 10 s, sending SIGKILL"
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
  done
  wait_gone 20
  say "stopped ${names[*]} (${pids[*]})"
else
  say "no $STATE/pids; nothing to stop"
fi

# Backstop: job processes and slurmstepd left behind (their environment names this instance's
# SLURM_CONF, plus SLURM_JOB_ID or the name slurmstepd); killed one by one by PID, never this
# script or its callers.
protect=" $$ "
p=$$
while [ "$p" -gt 1 ] 2>/dev/null; do
  p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null || echo 1); protect+="$p "
done
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  case "$protect" in *" $p "*) continue ;; esac
  env_file="$d/environ"
  [ -r "$env_file" ] || continue
  if grep -qz "^SLURM_CONF=$STATE/etc/slurm.conf\$" "$env_file" 2>/dev/null \
     && { grep -qz '^SLURM_JOB_ID=' "$env_file" 2>/dev/null || [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ]; }; then
    say "killing leftover job process $p ($(tr '\0' ' ' <"$d/cmdline" 2>/dev/null | cut -c1-80))"
    kill -KILL "$p" 2>/dev/null || true
  fi
done

if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$STATE/etc/slurm.conf" ]; then
  rm -f /etc/slurm/slurm.conf
fi
if [ "${EDITSCALE_SLURM_KEEP:-0}" = 1 ]; then
  rm -f "$STATE/pids"
  say "kept $STATE"
else
  rm -rf "$STATE"
  say "removed $STATE"
fi
