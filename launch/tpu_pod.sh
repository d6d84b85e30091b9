#!/usr/bin/env bash
# Trains sagan_jax on a Cloud TPU VM slice: one process per worker, one gs:// workdir.
#
# Usage:
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --accelerator-type=v4-32 \
#       --config=configs/cifar10.py:case=2 --workdir=gs://BUCKET/DIR [options] [-- MAIN_FLAGS]
#
# What it does, each command printed as "+ command" before it runs:
#   1. `tpu-vm describe` the slice; create it if it does not exist (or was preempted).
#   2. Put the project on every worker: a git URL is cloned there (pulled if present);
#      a local checkout (default: the one holding this script) is packed (its files that
#      git does not ignore) and copied with `tpu-vm scp --worker=all`.
#   3. On every worker: a Python >= 3.11 environment made by uv (TPU VM images ship 3.10)
#      and `pip install -e ".[tpu]"`.
#   4. On every worker: `nohup python -m sagan_jax.main ...` logging to ~/sagan_jax.log.
#      The workers find each other by themselves (jax.distributed on TPU needs no flags).
#   5. With --logs: every worker's log, each line prefixed with the worker's host name.
#
# Options (flag, or environment variable):
#   --name NAME              TPU_NAME          TPU VM name (created if it does not exist)
#   --zone ZONE              ZONE              e.g. us-central2-b
#   --project PROJECT        PROJECT           default: gcloud's configured project
#   --accelerator-type TYPE  ACCELERATOR_TYPE  e.g. v4-32, v5litepod-16, v5p-8, v6e-8
#   --version VERSION        RUNTIME_VERSION   TPU VM software version; default by type:
#                            tpu-ubuntu2204-base (v2-v4), v2-alpha-tpuv5-lite (v5e),
#                            v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e)
#   --repo URL|PATH          REPO              git URL, or local checkout to copy
#                                              (default: this script's checkout)
#   --config CONFIG          CONFIG            e.g. configs/cifar10.py:case=2
#   --workdir gs://...       WORKDIR           run directory that every worker writes to
#   --data-dir gs://...      DATA_DIR          TFDS data_dir (gs://tfds-data/datasets is
#                                              TFDS's public bucket of prepared datasets)
#   --python X.Y             PYTHON_VERSION    Python of the workers' environment (3.12)
#   --spot                                     create the slice as Spot VMs
#   --logs                                     stream every worker's log after the start
#   --dry-run                                  print the commands, run none
#   -h, --help                                 this text
#   -- MAIN_FLAGS                              more flags for sagan_jax.main, e.g.
#                                              -- --config.train.batch_size=512
# A parameter that is missing or malformed stops the script with one line (exit 2).
# Rerunning it after a preemption recreates the slice and the run resumes from the last
# checkpoint in the workdir.
set -euo pipefail

me="$(basename "$0")"
here="$(cd "$(dirname "$0")" && pwd)"

name="${TPU_NAME:-}"
zone="${ZONE:-}"
project="${PROJECT:-}"
accelerator_type="${ACCELERATOR_TYPE:-}"
version="${RUNTIME_VERSION:-}"
repo="${REPO:-$(dirname "$here")}"
config="${CONFIG:-}"
workdir="${WORKDIR:-}"
data_dir="${DATA_DIR:-}"
python="${PYTHON_VERSION:-3.12}"
spot=0
logs=0
dry_run=0
main_flags=()

# Flags that take a value; --data-dir sets $data_dir and so on.
value_flags=" --name --zone --project --accelerator-type --version --repo --config --workdir\
 --data-dir --python "

# Flags that take no value; --dry-run sets $dry_run to 1.
switch_flags=" --dry-run --spot --logs "

# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"

parse_args "$@"

[[ $name ]] || die "set --name or TPU_NAME to the TPU VM's name"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--name '$name' is not a TPU name: lower-case letters, digits and hyphens"
[[ $zone ]] || die "set --zone or ZONE to the TPU's zone, e.g. us-central2-b"
[[ $zone =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] \
  || die "--zone '$zone' is not a zone such as us-central2-b"
[[ $accelerator_type ]] || die "set --accelerator-type or ACCELERATOR_TYPE, e.g. v4-32"
[[ $accelerator_type =~ ^[a-z][a-z0-9]*-[0-9]+$ ]] \
  || die "--accelerator-type '$accelerator_type' is not a TPU type such as v4-32, v5p-8, v6e-16"
if [[ -z $version ]]; then
  case ${accelerator_type%-*} in  # Cloud TPU's software versions for JAX, by generation.
    v2 | v3 | v4) version="tpu-ubuntu2204-base" ;;
    v5litepod) version=v2-alpha-tpuv5-lite ;;
    v5p) version=v2-alpha-tpuv5 ;;
    v6e) version=v2-alpha-tpuv6e ;;
    *) die "set --version or RUNTIME_VERSION: no default software version for $accelerator_type" ;;
  esac
fi
[[ $config ]] || die "set --config or CONFIG, e.g. configs/cifar10.py:case=2"
[[ $workdir ]] || die "set --workdir or WORKDIR to a gs://BUCKET/DIR that every worker can write"
[[ $workdir =~ ^gs://[^/]+ ]] \
  || die "--workdir '$workdir' must be a gs://BUCKET/DIR path: every worker writes to it"
[[ -z $data_dir || $data_dir =~ ^gs://[^/]+ ]] \
  || die "--data-dir '$data_dir' must be a gs:// path that every worker can read"
[[ $python =~ ^3\.(1[1-9]|[2-9][0-9])$ ]] \
  || die "--python '$python' must be 3.11 or newer, e.g. 3.12"
if [[ $repo =~ ^(https?|ssh|git)://|^[^/]+@[^/:]+: ]]; then
  repo_kind=git
elif [[ -d $repo ]]; then
  repo_kind=local
  repo="$(cd "$repo" && pwd)"
  [[ -f $repo/setup.py ]] \
    || die "--repo $repo has no setup.py: give a sagan_jax checkout or git URL"
  [[ -f $repo/${config%%:*} ]] || die "--config: no file ${config%%:*} in $repo"
else
  die "--repo '$repo' is neither a directory nor a git URL"
fi
((dry_run)) || command -v gcloud >/dev/null \
  || die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk)"

tpu=(compute tpus tpu-vm)
where=(--zone="$zone")
[[ -z $project ]] || where+=(--project="$project")
# Paths on the workers: their ~ expands there, in the commands sent to them.
# shellcheck disable=SC2088
declare -r remote_repo='~/sagan_jax' venv='~/sagan_jax_venv' log='~/sagan_jax.log' \
  pid='~/sagan_jax.pid'

on_workers() {  # Runs one shell command on every worker of the slice.
  run gcloud "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$1"
}

((!dry_run)) || echo "# dry run: the commands are printed, none is run"

# 1. The slice.
describe="$(join_quoted gcloud "${tpu[@]}" describe "$name" "${where[@]}" --format='value(state)')"
echo "+ $describe"
if ((dry_run)); then
  echo "# dry run: assuming that $name does not exist, so it is created"
  state=""
else
  state="$(eval "$describe" 2>/dev/null)" || state=""
fi
if [[ $state == READY ]]; then
  echo "# $name exists: reusing it"
else
  case $state in
    "") ;;
    PREEMPTED | TERMINATED) run gcloud "${tpu[@]}" delete "$name" "${where[@]}" --quiet ;;
    *)
      echo "$me: $name is $state: wait until it is READY, or delete it" \
        "(gcloud ${tpu[*]} delete $name ${where[*]})" >&2
      exit 1 ;;
  esac
  create=(gcloud "${tpu[@]}" create "$name" "${where[@]}"
    --accelerator-type="$accelerator_type" --version="$version")
  ((!spot)) || create+=(--spot)
  run "${create[@]}"
fi

# 2. The project on every worker.
if [[ $repo_kind == local ]]; then
  archive="${TMPDIR:-/tmp}/sagan_jax-$name.tgz"
  if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and untracked files that git does not ignore: no .git, caches or venvs.
    run_line "git -C $(quote "$repo") ls-files -z --cached --others --exclude-standard |\
 tar -czf $(quote "$archive") -C $(quote "$repo") --null -T -"
  else
    run tar -czf "$archive" -C "$repo" --exclude=.git --exclude=__pycache__ \
      --exclude='*.egg-info' .
  fi
  run gcloud "${tpu[@]}" scp "$archive" "$name:sagan_jax.tgz" "${where[@]}" --worker=all
  fetch="rm -rf $remote_repo && mkdir -p $remote_repo && tar -xzf ~/sagan_jax.tgz -C $remote_repo"
else
  fetch="if [ -d $remote_repo/.git ]; then git -C $remote_repo pull --ff-only;\
 else rm -rf $remote_repo && git clone $(quote "$repo") $remote_repo; fi"
fi

# 3. Install: uv brings a Python >= 3.11 (JAX needs it) next to the image's 3.10.
on_workers "set -e; $fetch; [ -x ~/.local/bin/uv ] || python3 -m pip install --user -q uv;\
 [ -x $venv/bin/python ] || ~/.local/bin/uv venv -q --seed --python $python $venv;\
 cd $remote_repo && $venv/bin/pip install -q -e \".[tpu]\""

# 4. The same command on every worker; a run still going there is not started twice.
main=("-m" sagan_jax.main --config="$config" --workdir="$workdir")
[[ -z $data_dir ]] || main+=(--config.data.data_dir="$data_dir")
main+=(${main_flags[@]+"${main_flags[@]}"})  # Empty arrays trip `set -u` in bash < 4.4.
on_workers "cd $remote_repo; if [ -f $pid ] && kill -0 \$(cat $pid) 2>/dev/null;\
 then echo \"a run is going on \$(hostname): pid \$(cat $pid)\" >&2; exit 1; fi;\
 nohup $venv/bin/python $(join_quoted "${main[@]}") > $log 2>&1 < /dev/null & echo \$! > $pid"

# 5. Logs.
tail_logs="tail -n +1 -F $log | sed -u \"s/^/\$(hostname): /\""
ssh=(gcloud "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command)
echo "# started on every worker of $name; outputs in $workdir"
echo "# logs:   $(join_quoted "${ssh[@]}" "$tail_logs")"
echo "# stop:   $(join_quoted "${ssh[@]}" "kill \$(cat $pid)")"
echo "# delete: $(join_quoted gcloud "${tpu[@]}" delete "$name" "${where[@]}")"
((!logs)) || on_workers "$tail_logs"
