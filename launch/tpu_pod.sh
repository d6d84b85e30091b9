#!/usr/bin/env bash
# Trains sagan_jax on a Cloud TPU VM slice: one process per worker, one gs:// workdir.
#
# Usage:
#   launch/tpu_pod.sh --name=NAME --zone=ZONE --accelerator-type=v4-32 \
#       --config=configs/cifar10.py:case=2 --workdir=gs://BUCKET/DIR [options] [-- MAIN_FLAGS]
#
# What it does, each command printed as "+ command" before it runs:
#   1. `tpu-vm describe` the slice; create it if it does not exist (or was preempted).
#      With --queued, through a queued resource of the same name instead, which waits
#      in Google's queue for capacity: the script shows its state as it changes (it
#      asks every --poll seconds) until it is ACTIVE. One that was preempted
#      (SUSPENDED) or FAILED is deleted (`--force`) and requested again; one still
#      queued is waited for.
#   2. Put the project on every worker: a git URL is cloned there (pulled if present);
#      a local checkout (default: the one holding this script) is packed (its files that
#      git does not ignore) and copied with `tpu-vm scp --worker=all`.
#   3. On every worker: a venv made by uv on the image's Python if that is 3.11 or newer
#      (none is downloaded then), else on a Python 3.12 that uv downloads (not with
#      --internal-ips), and `pip install -e ".[tpu]"`.
#   4. On every worker: a check that JAX sees the worker's TPU chips, one line if not.
#   5. On every worker: `nohup python -m sagan_jax.main ...` logging to ~/sagan_jax.log.
#      The workers find each other by themselves (jax.distributed on TPU needs no flags).
#   6. With --logs: every worker's log, each line prefixed with the worker's host name.
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
#   --data-dir gs://...      DATA_DIR          TFDS data_dir that the run prepares the
#                                              dataset into, in your bucket (to read TFDS's
#                                              public one: -- --config.data.try_gcs=True)
#   --python X.Y|PATH        WORKER_PYTHON     the workers' Python for the venv: a version
#                                              (the image's, else downloaded) or a path
#                                              there; default: the image's 3.11+, else 3.12
#   --poll SECONDS           POLL_SECONDS      --queued: seconds between state checks (30)
#   --queued                                   get the slice through a queued resource
#   --spot                                     create the slice as Spot VMs
#   --internal-ips                             workers without external IPs: reached by
#                                              their internal IPs, no Python download
#   --logs                                     stream every worker's log after the start
#   --dry-run                                  print the commands, run none
#   -h, --help                                 this text
#   -- MAIN_FLAGS                              more flags for sagan_jax.main, e.g.
#                                              -- --config.train.batch_size=512
# A parameter that is missing or malformed stops the script with one line (exit 2).
# Rerunning it after a preemption recreates the slice (or its queued resource) and the
# run resumes from the last checkpoint in the workdir.
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
python="${WORKER_PYTHON:-}"
poll="${POLL_SECONDS:-30}"
queued=0
spot=0
internal_ips=0
logs=0
dry_run=0
main_flags=()

# Flags that take a value; --data-dir sets $data_dir and so on.
value_flags=" --name --zone --project --accelerator-type --version --repo --config --workdir\
 --data-dir --python --poll "

# Flags that take no value; --dry-run sets $dry_run to 1.
switch_flags=" --dry-run --queued --spot --internal-ips --logs "

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
# The run prepares a missing dataset into its data_dir, and nobody may write to TFDS's.
[[ ! $data_dir =~ ^gs://tfds-data(/|$) ]] \
  || die "--data-dir $data_dir is TFDS's read-only public bucket, which the run would\
 prepare the dataset into: read it with -- --config.data.try_gcs=True instead, or give a\
 gs:// folder of yours"
[[ -z $python || $python =~ ^3\.(1[1-9]|[2-9][0-9])$ || $python == /* ]] \
  || die "--python '$python' must be 3.11 or newer, e.g. 3.12, or the path of such a\
 Python on the workers"
[[ $poll =~ ^[0-9]+$ ]] || die "--poll '$poll' must be a whole number of seconds"
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
qr=(compute tpus queued-resources)
where=(--zone="$zone")
[[ -z $project ]] || where+=(--project="$project")
reach=("${where[@]}")  # How ssh and scp reach the workers.
((!internal_ips)) || reach+=(--internal-ip)
# Paths on the workers: their ~ expands there, in the commands sent to them.
# shellcheck disable=SC2088
declare -r remote_repo='~/sagan_jax' venv='~/sagan_jax_venv' log='~/sagan_jax.log' \
  pid='~/sagan_jax.pid' uv='~/.local/bin/uv'

on_workers() {  # Runs one shell command on every worker of the slice.
  run gcloud "${tpu[@]}" ssh "$name" "${reach[@]}" --worker=all --command "$1"
}

describe() {  # describe tpu-vm|queued-resources: the command line that prints the state.
  local format='value(state)'
  [[ $1 == tpu-vm ]] || format='value(state.state)'
  join_quoted gcloud compute tpus "$1" describe "$name" "${where[@]}" --format="$format"
}

state_of() {  # Runs a describe line: the state, or nothing where there is no such resource.
  eval "$1" 2>/dev/null || true
}

create_slice() {  # Asks for the slice at once: it fails where there is no capacity now.
  local create=(gcloud "${tpu[@]}" create "$name" "${where[@]}"
    --accelerator-type="$accelerator_type" --version="$version")
  ((!spot)) || create+=(--spot)
  ((!internal_ips)) || create+=(--internal-ips)
  run "${create[@]}"
}

queue_slice() {  # Queues the request for the slice: it waits in line for capacity.
  local create=(gcloud "${qr[@]}" create "$name" --node-id="$name" "${where[@]}"
    --accelerator-type="$accelerator_type" --runtime-version="$version")
  ((!spot)) || create+=(--spot)
  ((!internal_ips)) || create+=(--internal-ips)
  run "${create[@]}"
}

requeue() {  # A preempted or failed request is never filled again: a new one is.
  echo "# $name is $1: deleting its queued resource and queueing a new one"
  run gcloud "${qr[@]}" delete "$name" "${where[@]}" --force --quiet
  queue_slice
}

wait_active() {  # Prints the queued resource's state whenever it changes, until ACTIVE.
  local line state last="" misses=0
  line="$(describe queued-resources)"
  echo "# until $name is ACTIVE, every $poll s: $line"
  if ((dry_run)); then
    echo "# dry run: assuming that $name becomes ACTIVE"
    return
  fi
  SECONDS=0
  while :; do
    state="$(state_of "$line")"
    if [[ $state ]]; then misses=0; elif ((++misses == 5)); then
      echo "$me: error: five describes of the queued resource $name in a row failed: is it" \
        "deleted? (gcloud ${qr[*]} list ${where[*]})" >&2
      exit 1
    fi
    [[ $state == "$last" ]] || echo "# $name: ${state:-no answer} after $SECONDS s"
    last=$state
    case $state in
      ACTIVE) return ;;
      FAILED | SUSPENDING | SUSPENDED)
        echo "$me: error: the queued resource $name is $state (the reason: gcloud ${qr[*]}" \
          "describe $name ${where[*]}); rerun this command to queue it again" >&2
        exit 1 ;;
    esac
    sleep "$poll"
  done
}

((!dry_run)) || echo "# dry run: the commands are printed, none is run"

# 1. The slice: reused where it is READY, else created or (--queued) waited for.
kind="tpu-vm"
((!queued)) || kind="queued-resources"
line="$(describe $kind)"
echo "+ $line"
if ((dry_run)); then
  echo "# dry run: assuming that $name does not exist, so it is created"
  state=""
else
  state="$(state_of "$line")"
fi
if ((!queued)); then
  case $state in
    READY) echo "# $name exists: reusing it" ;;
    "") create_slice ;;
    PREEMPTED | TERMINATED)
      run gcloud "${tpu[@]}" delete "$name" "${where[@]}" --quiet
      create_slice ;;
    *)
      echo "$me: $name is $state: wait until it is READY, or delete it" \
        "(gcloud ${tpu[*]} delete $name ${where[*]})" >&2
      exit 1 ;;
  esac
else
  case $state in
    "") queue_slice; wait_active ;;
    ACTIVE)  # Its node can be preempted before the queued resource says so.
      line="$(describe tpu-vm)"
      echo "+ $line"
      state="$(state_of "$line")"
      case $state in
        READY) echo "# $name exists: reusing it" ;;
        PREEMPTED | TERMINATED | "") requeue "${state:-gone}"; wait_active ;;
        *)
          echo "$me: $name is $state: wait until it is READY, or delete it" \
            "(gcloud ${qr[*]} delete $name ${where[*]} --force)" >&2
          exit 1 ;;
      esac ;;
    FAILED | SUSPENDING | SUSPENDED) requeue "$state"; wait_active ;;
    CREATING | ACCEPTED | WAITING_FOR_RESOURCES | PROVISIONING)
      echo "# $name is queued already ($state)"
      wait_active ;;
    *)
      echo "$me: the queued resource $name is $state: wait, then rerun, or delete it" \
        "(gcloud ${qr[*]} delete $name ${where[*]} --force)" >&2
      exit 1 ;;
  esac
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
  run gcloud "${tpu[@]}" scp "$archive" "$name:sagan_jax.tgz" "${reach[@]}" --worker=all
  fetch="rm -rf $remote_repo && mkdir -p $remote_repo && tar -xzf ~/sagan_jax.tgz -C $remote_repo"
else
  fetch="if [ -d $remote_repo/.git ]; then git -C $remote_repo pull --ff-only;\
 else rm -rf $remote_repo && git clone $(quote "$repo") $remote_repo; fi"
fi

# 3. Install into a venv on a Python >= 3.11 (JAX needs it; today's images ship 3.10). uv
# takes the image's own where it has one, so nothing is downloaded then (workers with
# internal IPs only reach no download site). Only where it has none, and not with
# --internal-ips or a path, does uv download one: 3.12, or the --python X.Y.
uv_venv="$uv venv -q --seed"
wanted="${python:->=3.11}"
make_venv="$uv_venv --python-preference only-system --python $(quote "$wanted") $venv"
no_python="no Python $wanted here (TPU VM images ship 3.10)"
if ((!internal_ips)) && [[ $python != /* ]]; then
  make_venv+=" || $uv_venv --python-preference only-managed --python ${python:-3.12} $venv"
  no_python+=" and no download of Python ${python:-3.12}"
fi
no_python+=": give --python=PATH of a Python 3.11+ on the workers, or an image that has one"
on_workers "set -e; $fetch; [ -x $uv ] || python3 -m pip install --user -q uv;\
 [ -x $venv/bin/python ] || { $make_venv; } 2>/dev/null\
 || { echo \"\$(hostname): error: $no_python\" >&2; exit 1; };\
 cd $remote_repo && $venv/bin/pip install -q -e \".[tpu]\""

# 4. Every worker's JAX on its TPU chips, before any starts: JAX_PLATFORMS=tpu turns a
# silent fallback to the CPU into an error, whose last line says why.
running="if [ -f $pid ] && kill -0 \$(cat $pid) 2>/dev/null;\
 then echo \"a run is going on \$(hostname): pid \$(cat $pid)\" >&2; exit 1; fi"
check='import jax; print("JAX", jax.__version__, "sees", jax.local_device_count(), "x",'
check+=' jax.local_devices()[0].device_kind)'
on_workers "cd $remote_repo; $running;\
 out=\$(JAX_PLATFORMS=tpu $venv/bin/python -c $(quote "$check") 2>&1)\
 || { echo \"\$(hostname): error: JAX sees no TPU (\$(echo \"\$out\" | tail -n 1)): reinstall\
 with $venv/bin/pip install -U -e '.[tpu]' in $remote_repo\" >&2; exit 1; };\
 echo \"\$(hostname): \$(echo \"\$out\" | grep -m 1 '^JAX .* sees ')\""

# 5. The same command on every worker; a run still going there is not started twice.
main=("-m" sagan_jax.main --config="$config" --workdir="$workdir")
[[ -z $data_dir ]] || main+=(--config.data.data_dir="$data_dir")
main+=(${main_flags[@]+"${main_flags[@]}"})  # Empty arrays trip `set -u` in bash < 4.4.
on_workers "cd $remote_repo; $running;\
 nohup $venv/bin/python $(join_quoted "${main[@]}") > $log 2>&1 < /dev/null & echo \$! > $pid"

# 6. Logs.
tail_logs="tail -n +1 -F $log | sed -u \"s/^/\$(hostname): /\""
ssh=(gcloud "${tpu[@]}" ssh "$name" "${reach[@]}" --worker=all --command)
echo "# started on every worker of $name; outputs in $workdir"
echo "# logs:   $(join_quoted "${ssh[@]}" "$tail_logs")"
echo "# stop:   $(join_quoted "${ssh[@]}" "kill \$(cat $pid)")"
if ((queued)); then
  echo "# delete: $(join_quoted gcloud "${qr[@]}" delete "$name" "${where[@]}" --force)"
else
  echo "# delete: $(join_quoted gcloud "${tpu[@]}" delete "$name" "${where[@]}")"
fi
((!logs)) || on_workers "$tail_logs"
