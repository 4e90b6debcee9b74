#!/bin/sh
# Data-parallel `ldmc train` under Open MPI's mpirun: one process per GPU (or one per node on the
# CPU), on this node or on the nodes of a hostfile. docs/multigpu.md.
#
# usage: launch/mpirun.sh [options] CONFIG [ldmc train arguments: --set k=v, --resume latest]
#   -n N        processes per node (default: the GPUs nvidia-smi lists, or 1 without a GPU)
#   -H FILE     hostfile, one line per node: "node1 slots=8" (default: this node only)
#   -i IFACE    the network interface every node reaches (NCCL_SOCKET_IFNAME and Open MPI's
#               TCP transports); NCCL_IB_HCA and the other NCCL_* variables set in the
#               environment are passed on as they are
#   -r N        on a failure after a checkpoint exists, restart up to N times with
#               --resume latest (a job ended by a dead or hung rank continues from its last
#               checkpoint)
#   -b PATH     the ldmc executable (default: build/ldmc beside this script)
# exit status: ldmc train's (0 done, 1 error, 130/143/138 stopped by a signal after saving,
# 3 a rank's watchdog), or mpirun's when a rank died.
set -u
here=$(cd "$(dirname "$0")" && pwd)
per_node=""
hostfile=""
iface=""
retries=0
ldmc="$here/../build/ldmc"
while getopts "n:H:i:r:b:" opt; do
    case $opt in
    n) per_node=$OPTARG ;;
    H) hostfile=$OPTARG ;;
    i) iface=$OPTARG ;;
    r) retries=$OPTARG ;;
    b) ldmc=$OPTARG ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { sed -n '2,20p' "$0" >&2; exit 2; }
command -v mpirun > /dev/null || { echo "mpirun.sh: no mpirun (install openmpi-bin)" >&2; exit 2; }
[ -x "$ldmc" ] || { echo "mpirun.sh: $ldmc is not built (scripts/build.sh)" >&2; exit 2; }

if [ -z "$per_node" ]; then
    per_node=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU') || true
    [ "${per_node:-0}" -gt 0 ] || per_node=1
fi
nodes=1
[ -n "$hostfile" ] && nodes=$(grep -cvE '^[[:space:]]*(#|$)' "$hostfile")
np=$((per_node * nodes))

set -- --map-by "ppr:$per_node:node" --bind-to none -np "$np" \
    -x PATH -x LD_LIBRARY_PATH -x "NCCL_DEBUG=${NCCL_DEBUG:-WARN}" "$ldmc" train "$@"
[ -n "$hostfile" ] && set -- --hostfile "$hostfile" "$@"
if [ -n "$iface" ]; then
    set -- -x "NCCL_SOCKET_IFNAME=$iface" --mca btl_tcp_if_include "$iface" \
        --mca oob_tcp_if_include "$iface" "$@"
fi
for v in $(env | sed -n 's/^\(NCCL_[A-Z_]*\)=.*/\1/p' | grep -v '^NCCL_DEBUG$'); do
    set -- -x "$v" "$@"
done
[ "$(id -u)" -eq 0 ] && set -- --allow-run-as-root "$@" # containers that run as root
# several ranks on a CPU-only node share its cores
[ "$per_node" -gt 1 ] && ! nvidia-smi -L > /dev/null 2>&1 && set -- --oversubscribe "$@"

attempt=0
while :; do
    echo "mpirun.sh: $nodes node(s) x $per_node = $np ranks (attempt $((attempt + 1)))" >&2
    mpirun "$@"
    status=$?
    case $status in
    0 | 130 | 143 | 138 | 2) exit $status ;; # done, stopped by a signal (saved), a usage error
    esac
    [ "$attempt" -lt "$retries" ] || exit $status
    attempt=$((attempt + 1))
    # a restart continues the run from its newest checkpoint
    case " $* " in *" --resume "*) ;; *) set -- "$@" --resume latest ;; esac
    echo "mpirun.sh: the job ended with status $status; restarting from the last checkpoint" >&2
    sleep 5
done
