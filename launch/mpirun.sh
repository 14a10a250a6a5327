#!/usr/bin/env bash
# Launch ringattn (or any command) over Open MPI, one rank per device.
#
#   launch/mpirun.sh -np 16 --hostfile hosts --ranks-per-node 8 -- \
#       build/release/src/ringattn run --config configs/default.ini --seq-len 1048576
#   launch/mpirun.sh -np 4 --oversubscribe -- build/release/src/ringattn run --threads 1
#
# Options (before `--`; everything after it is the command):
#   -np P                 ranks (default 2)
#   --hostfile FILE       Open MPI hostfile: one line per node, `node01 slots=8`
#                         (without it every rank runs on this machine)
#   --ranks-per-node K    ranks on each node (--map-by ppr:K:node); one per GPU on GPU nodes
#   --bind core|socket|none
#                         what each rank is bound to (default: none, so a rank's OpenMP
#                         threads may use every core; `core` pins one core per rank)
#   --threads T           OMP_NUM_THREADS for every rank (default: an exported
#                         OMP_NUM_THREADS, else the cores each rank is bound to, shared
#                         out: nproc / P with --bind none on this machine (at least 1), 1
#                         with --bind core; unset with a hostfile or --bind socket, where
#                         `ringattn run` counts the cores of each rank's binding and the
#                         ranks sharing them); said on stderr
#   --oversubscribe       allow more ranks than cores: single-node simulation of a bigger
#                         job (added automatically when P exceeds this machine's cores and
#                         there is no hostfile)
#   --dry-run             print the mpirun command instead of running it
#
# Root: Open MPI refuses to run as root unless OMPI_ALLOW_RUN_AS_ROOT=1 and
# OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 are set; this script sets them when run as root
# (containers, CI). stdin is /dev/null: mpirun forwards stdin to rank 0 otherwise, and a
# job started from a script that reads stdin would hang.
# Environment passed to every rank: OMP_NUM_THREADS, OPENBLAS_CORETYPE, RINGATTN_*.
set -euo pipefail

np=2
hostfile=""
per_node=""
bind="none"
threads=""
oversubscribe=0
dry=0
while (($#)); do
  case "$1" in
    -np | -n | --np) np="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    --ranks-per-node) per_node="$2"; shift 2 ;;
    --bind) bind="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --oversubscribe) oversubscribe=1; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "launch/mpirun.sh: unknown option '$1' (see --help); put the command after --" >&2
       exit 2 ;;
  esac
done
if (($# == 0)); then
  echo "launch/mpirun.sh: no command; usage: launch/mpirun.sh [options] -- COMMAND ARGS..." >&2
  exit 2
fi
if ! [[ "$np" =~ ^[1-9][0-9]*$ ]]; then
  echo "launch/mpirun.sh: -np: expected a positive integer, got '$np'" >&2
  exit 2
fi
case "$bind" in core | socket | none) ;; *)
  echo "launch/mpirun.sh: --bind: expected core, socket or none, got '$bind'" >&2
  exit 2 ;;
esac
if ! command -v mpirun >/dev/null; then
  echo "launch/mpirun.sh: mpirun not found (scripts/install-deps.sh installs Open MPI)" >&2
  exit 2
fi

args=(-np "$np" --bind-to "$bind")
if [[ -n "$hostfile" ]]; then
  [[ -r "$hostfile" ]] || { echo "launch/mpirun.sh: --hostfile: cannot read '$hostfile'" >&2; exit 2; }
  args+=(--hostfile "$hostfile")
elif ((np > $(nproc))); then
  oversubscribe=1
fi
[[ -n "$per_node" ]] && args+=(--map-by "ppr:${per_node}:node")
((oversubscribe)) && args+=(--oversubscribe)
if [[ -z "$threads" && -z "$hostfile" && -z "${OMP_NUM_THREADS:-}" ]]; then
  cores=$(nproc)  # the cores this shell may use (nproc obeys OMP_NUM_THREADS: unset here)
  case "$bind" in
    none)
      threads=$((cores / np))
      ((threads >= 1)) || threads=1
      echo "launch/mpirun.sh: $np rank(s) share this machine's $cores cores: $threads thread(s) per rank (OMP_NUM_THREADS; --threads to change)" >&2 ;;
    core)
      threads=1
      echo "launch/mpirun.sh: each rank bound to one core: 1 thread per rank (OMP_NUM_THREADS)" >&2 ;;
  esac
fi
[[ -n "$threads" ]] && export OMP_NUM_THREADS="$threads"
for v in OMP_NUM_THREADS OPENBLAS_CORETYPE $(compgen -e | grep '^RINGATTN_' || true); do
  [[ -n "${!v:-}" ]] && args+=(-x "$v")
done
if [[ $(id -u) -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

if ((dry)); then
  echo "mpirun ${args[*]} $*"
  exit 0
fi
exec mpirun "${args[@]}" "$@" </dev/null
