#!/usr/bin/env bash
# Trains sagan_jax on the GPUs of one machine, or of several (one process per machine).
#
# Usage, from the repository root:
#   launch/gpu.sh --config=configs/cifar10.py:case=2 --workdir=DIR [options] [-- MAIN_FLAGS]
#   launch/gpu.sh ... --nodes=N --node-rank=I --coordinator=HOST:PORT   # on each machine
#
# One machine: one process that uses all its GPUs (JAX sees every visible GPU; the
# global batch is split over them). Several machines: run the same command on each with
# its own --node-rank (0..N-1) and the same --coordinator, the address of node 0 and a
# free port there; the workdir must be one that every machine sees (gs:// or shared disk).
# Each command is printed as "+ command" before it runs:
#   1. with --install: a venv (--venv) on $PYTHON, which must be 3.11 or newer, made by uv
#      where it is on PATH, else by `python -m venv`; then `pip install -e ".[gpu]"`
#      (JAX's CUDA build) into it. Nothing goes into the system's Python (PEP 668).
#   2. a check that JAX sees a GPU (without the CUDA build it falls back to the CPU);
#   3. `python -m sagan_jax.main ...`, with --coordinator_address, --num_processes and
#      --process_id when --nodes > 1.
# Steps 2 and 3 use the venv's python where the venv exists, else $PYTHON.
#
# Options (flag, or environment variable):
#   --config CONFIG          CONFIG        e.g. configs/cifar10.py:case=2
#   --workdir DIR            WORKDIR       run directory (local path or gs://)
#   --data-dir DIR           DATA_DIR      TFDS data_dir (optional)
#   --nodes N                NUM_NODES     machines in the run (default 1)
#   --node-rank I            NODE_RANK     this machine's index, 0..N-1
#   --coordinator HOST:PORT  COORDINATOR   node 0's address and a free port
#   --venv DIR               VENV          the venv (default: .venv in the repository)
#   --install                              install the project with JAX's CUDA build
#   --dry-run                              print the commands, run none
#   -h, --help                             this text
#   -- MAIN_FLAGS                          more flags for sagan_jax.main
# $PYTHON (default python3) is the interpreter that --install makes the venv on. A
# parameter that is missing or malformed, or a $PYTHON older than 3.11, stops the script
# with one line (exit 2). Rerun the same command to resume.
set -euo pipefail

me="$(basename "$0")"
repo="$(cd "$(dirname "$0")/.." && pwd)"

config="${CONFIG:-}"
workdir="${WORKDIR:-}"
data_dir="${DATA_DIR:-}"
nodes="${NUM_NODES:-1}"
node_rank="${NODE_RANK:-}"
coordinator="${COORDINATOR:-}"
python="${PYTHON:-python3}"
venv="${VENV:-$repo/.venv}"
install=0
dry_run=0
main_flags=()

# Flags that take a value; --node-rank sets $node_rank and so on.
value_flags=" --config --workdir --data-dir --nodes --node-rank --coordinator --venv "

# Flags that take no value; --dry-run sets $dry_run to 1.
switch_flags=" --dry-run --install "

# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"

parse_args "$@"

[[ $config ]] || die "set --config or CONFIG, e.g. configs/cifar10.py:case=2"
[[ -f ${config%%:*} ]] \
  || die "--config: no file ${config%%:*} here; run from the repository root or give its path"
[[ $workdir ]] || die "set --workdir or WORKDIR to the run's directory"
[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes '$nodes' must be a positive number of machines"
if ((nodes == 1)); then
  [[ -z $node_rank && -z $coordinator ]] \
    || die "--node-rank and --coordinator (NODE_RANK, COORDINATOR) need --nodes above 1"
else
  [[ $coordinator ]] || die "set --coordinator or COORDINATOR to node 0's HOST:PORT"
  [[ $coordinator =~ ^[^:/[:space:]]+:[0-9]+$ ]] \
    || die "--coordinator '$coordinator' must be HOST:PORT, e.g. 10.0.0.2:1234"
  [[ $node_rank ]] || die "set --node-rank or NODE_RANK to this machine's index, 0..$((nodes - 1))"
  if ! [[ $node_rank =~ ^(0|[1-9][0-9]*)$ ]] || ((node_rank >= nodes)); then
    die "--node-rank '$node_rank' must be one of 0..$((nodes - 1))"
  fi
fi
uv="$(command -v uv || true)"  # uv makes venvs without ensurepip, which Debian splits off.
made=0  # Whether the venv is there already.
[[ ! -x $venv/bin/python ]] || made=1
if ((install && !made && !dry_run)); then
  command -v "$python" >/dev/null || die "no $python: set PYTHON to a Python 3.11 or newer"
  at="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
  [[ $at =~ ^3\.(1[1-9]|[2-9][0-9])$ ]] || die "$python is Python ${at:-of unknown version};\
 sagan_jax needs 3.11 or newer: set PYTHON to one, e.g. PYTHON=python3.12 (uv python install 3.12)"
  [[ $uv ]] || "$python" -c 'import ensurepip' 2>/dev/null || die "$python cannot make a venv\
 (no ensurepip): install uv (https://docs.astral.sh/uv) or apt install python$at-venv"
fi
if ((install || made)); then
  run_python="$venv/bin/python"
else
  run_python="$python"
  ((dry_run)) || command -v "$python" >/dev/null \
    || die "no $python: set PYTHON to the interpreter, or make a venv with --install"
fi

((!dry_run)) || echo "# dry run: the commands are printed, none is run"
if ((install && !made)); then
  if [[ $uv ]]; then run uv venv --python "$python" "$venv"; else run "$python" -m venv "$venv"; fi
fi
if ((install)) && [[ $uv ]]; then
  run uv pip install --python "$run_python" -e "${repo}[gpu]"
elif ((install)); then
  run "$run_python" -m pip install -e "${repo}[gpu]"
fi
check='import sys, jax; jax.default_backend() == "gpu" or sys.exit('
check+='"JAX sees no GPU: install its CUDA build with launch/gpu.sh --install"); '
check+='print("JAX sees", jax.local_device_count(), "x", jax.devices()[0].device_kind)'
run "$run_python" -c "$check"
main=("$run_python" -m sagan_jax.main --config="$config" --workdir="$workdir")
[[ -z $data_dir ]] || main+=(--config.data.data_dir="$data_dir")
if ((nodes > 1)); then
  main+=(--coordinator_address="$coordinator" --num_processes="$nodes"
    --process_id="$node_rank")
fi
main+=(${main_flags[@]+"${main_flags[@]}"})  # Empty arrays trip `set -u` in bash < 4.4.
run "${main[@]}"
