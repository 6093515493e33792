#!/usr/bin/env bash
# Start a real single-node SLURM (munged + slurmctld + slurmd) by hand, without systemd.
# Usage (as root):  bash .ci/slurm/start.sh [STATE_DIR]      (default /tmp/editscale-slurm)
# Stop with:        bash .ci/slurm/stop.sh  [STATE_DIR]
# Everything (configs, munge key and socket, spool, logs, PIDs) lives under STATE_DIR; the
# only file written outside it is the symlink /etc/slurm/slurm.conf -> STATE_DIR/etc/slurm.conf,
# so that sbatch/squeue/scontrol (and Snakemake's SLURM executor) find the config without
# SLURM_CONF being exported.
# Environment overrides: EDITSCALE_SLURM_CPUS (default: nproc), EDITSCALE_SLURM_MEM_MB
# (default: 90% of MemTotal; may exceed the real memory: nothing enforces it), EDITSCALE_SLURM_WAIT_S
# (default 60: how long to wait for the node to become idle).
set -euo pipefail

STATE=$(realpath -m "${1:-/tmp/editscale-slurm}")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WAIT_S=${EDITSCALE_SLURM_WAIT_S:-60}
t0=$(date +%s)

die() { echo "slurm/start.sh: ERROR: $*" >&2; exit 1; }
say() { echo "slurm/start.sh: $*"; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
# On any failure after the daemons started: stop them again, keep the logs for inspection.
started=0
on_exit() {
  rc=$?
  if [ "$rc" -ne 0 ] && [ "$started" = 1 ]; then
    echo "slurm/start.sh: failed; stopping what was started, logs kept in $STATE/log" >&2
    EDITSCALE_SLURM_KEEP=1 bash "$HERE/stop.sh" "$STATE" >&2 || true
  fi
}
trap on_exit EXIT

# --- 1. packages --------------------------------------------------------------------------
need_install=0
for b in slurmctld slurmd sbatch squeue scontrol sinfo munged munge; do
  command -v "$b" >/dev/null 2>&1 || need_install=1
done
if [ "$need_install" = 1 ]; then
  say "installing slurmctld slurmd slurm-client munge from Debian"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' maintainer scripts from trying to start the services (no systemd/init here).
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt_log=$(mktemp)
  if ! { apt-get update && apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    die "apt-get failed"
  fi
  rm -f "$apt_log"
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  say "installed in $(( $(date +%s) - t0 )) s"
fi
say "$(slurmctld -V), munge $(dpkg-query -W -f='${Version}' munge 2>/dev/null || echo '?')"

# --- 2. fresh state dir ----------------------------------------------------------------------
if [ -f "$STATE/pids" ]; then
  say "an earlier instance is recorded in $STATE/pids; stopping it first"
  bash "$HERE/stop.sh" "$STATE"
fi
rm -rf "$STATE"
mkdir -p "$STATE"/{etc,munge,ctld,spool,log}
chmod 755 "$STATE"
: >"$STATE/pids"
started=1

# --- 3. munge ---------------------------------------------------------------------------------
# A private key and socket under STATE; munged runs as the 'munge' user the package created.
MUNGE_SOCK="$STATE/munge/munge.socket.2"
chown munge:munge "$STATE/munge"
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chown munge:munge "$STATE/munge/munge.key"
chmod 400 "$STATE/munge/munge.key"
chmod 755 "$STATE/munge"   # munged wants it not group/other-writable; clients must reach the socket
setsid setpriv --reuid=munge --regid=munge --init-groups \
  munged --foreground --socket="$MUNGE_SOCK" --key-file="$STATE/munge/munge.key" \
  --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
  --seed-file="$STATE/munge/munged.seed" --num-threads=2 \
  </dev/null >>"$STATE/log/munged.out" 2>&1 &
echo "munged $!" >>"$STATE/pids"
for _ in $(seq 50); do [ -S "$MUNGE_SOCK" ] && break; sleep 0.1; done
munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK" >/dev/null 2>&1 \
  || { cat "$STATE/log/munged.out" "$STATE/munge/munged.log" 2>/dev/null >&2; die "munged does not work"; }

# --- 4. config ---------------------------------------------------------------------------------
NODE=$(hostname -s)
CPUS=${EDITSCALE_SLURM_CPUS:-$(nproc)}
MEM_MB=${EDITSCALE_SLURM_MEM_MB:-$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)}
DEF_MEM=$(( MEM_MB / CPUS ))
cat >"$STATE/etc/slurm.conf" <<EOF
# Written by .ci/slurm/start.sh: one node, two partitions, two fake GPUs, no accounting daemon.
ClusterName=editscale
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No systemd, no cgroup plugins: plain /proc process tracking, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
# No slurmdbd: 'sacct' does not work. Finished jobs stay visible to squeue/scontrol for MinJobAge
# seconds, and every finished job is appended to the jobcomp file.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
MinJobAge=86400
SchedulerType=sched/backfill
# Run the scheduler every second (defaults: 60 s / 30 s): a job starts ~1 s after a slot frees.
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM
GresTypes=gpu
ReturnToService=2
SlurmdParameters=config_overrides
InactiveLimit=0
KillWait=5
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
# Two fake GPUs, so two model jobs run side by side on the two cores (one GPU made the SLURM test
# run its model jobs one at a time): any existing file will do, no device is touched (no cgroup
# device confinement).
cat >"$STATE/etc/gres.conf" <<EOF
NodeName=$NODE Name=gpu File=/dev/null
NodeName=$NODE Name=gpu File=/dev/zero
EOF
mkdir -p /etc/slurm
if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
  die "/etc/slurm/slurm.conf exists and is not our symlink; refusing to replace it"
fi
ln -sfn "$STATE/etc/slurm.conf" /etc/slurm/slurm.conf
export SLURM_CONF="$STATE/etc/slurm.conf"

# --- 5. daemons -------------------------------------------------------------------------------
setsid slurmctld -D -i -f "$SLURM_CONF" </dev/null >>"$STATE/log/slurmctld.out" 2>&1 &
echo "slurmctld $!" >>"$STATE/pids"
ctld_pid=$!
for _ in $(seq 100); do
  kill -0 "$ctld_pid" 2>/dev/null || break
  scontrol ping >/dev/null 2>&1 && break
  sleep 0.2
done
scontrol ping >/dev/null 2>&1 || { tail -n 30 "$STATE/log/slurmctld.log" "$STATE/log/slurmctld.out" >&2 || true; die "slurmctld did not come up"; }

setsid slurmd -D -N "$NODE" -f "$SLURM_CONF" </dev/null >>"$STATE/log/slurmd.out" 2>&1 &
echo "slurmd $!" >>"$STATE/pids"

state=""
for _ in $(seq $(( WAIT_S * 2 ))); do
  state=$(sinfo -h -n "$NODE" -p cpu -o '%T' 2>/dev/null | head -n1 || true)
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "--- sinfo" >&2; sinfo -N -l >&2 || true; sinfo -R >&2 || true
  echo "--- slurmctld.log" >&2; tail -n 30 "$STATE/log/slurmctld.log" >&2 || true
  echo "--- slurmd.log" >&2; tail -n 30 "$STATE/log/slurmd.log" "$STATE/log/slurmd.out" >&2 || true
  die "node $NODE is '${state:-unknown}', not idle, after ${WAIT_S} s"
fi
say "node $NODE idle (CPUs=$CPUS RealMemory=${MEM_MB}M Gres=gpu:2; partitions cpu*, gpu) in $(( $(date +%s) - t0 )) s; state in $STATE"
