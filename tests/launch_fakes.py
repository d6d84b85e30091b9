"""Stand-ins for what the launch scripts call (`gcloud`, `python3`, `uv`), and helpers
that read the commands the scripts print, for tests/test_launch*.py.

`--dry-run` must print what a real run executes, so each script is also run for real
with stand-ins that record their arguments: the recorded calls must equal the dry run's
printed lines, parsed as a shell parses them.
"""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TPU_POD = REPO / "launch" / "tpu_pod.sh"
GPU = REPO / "launch" / "gpu.sh"
V4_32 = ["--name=sagan-v4", "--zone=us-central2-b", "--project=my-project",
         "--accelerator-type=v4-32", "--config=configs/cifar10.py:case=2",
         "--workdir=gs://my-bucket/cifar10_case2", "--data-dir=gs://my-bucket/tfds"]
V5E_16 = ["--name=sagan-v5e", "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
          "--config=configs/cifar10.py:case=2", "--workdir=gs://my-bucket/cifar10_case2"]
# The scripts' parameters that the environment can set, cleared for every test.
PARAMETER_VARIABLES = ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE", "RUNTIME_VERSION",
                       "REPO", "CONFIG", "WORKDIR", "DATA_DIR", "WORKER_PYTHON", "POLL_SECONDS",
                       "NUM_NODES", "NODE_RANK", "COORDINATOR", "PYTHON", "VENV")
# Records its arguments as one JSON line and stands in for what the scripts use of it:
# `tpu-vm describe` answers $FAKE_STATE, each `queued-resources describe` the next of
# $FAKE_QR_STATES (comma-separated; '' is "no such queued resource"; the last repeats);
# `python -m venv DIR` and `uv venv ... DIR` make DIR/bin/python, another recorder; the
# version and ensurepip queries of gpu.sh, which it does not print, answer
# $FAKE_PYTHON_VERSION and $FAKE_ENSUREPIP and are not recorded.
RECORDER = """#!{python}
import json, os, shutil, sys
args = sys.argv[1:]
if args[:1] == ["-c"] and "version_info" in args[1]:
    print(os.environ.get("FAKE_PYTHON_VERSION", "3.12"))
    sys.exit()
if args == ["-c", "import ensurepip"]:
    sys.exit(os.environ.get("FAKE_ENSUREPIP", "1") != "1")
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:2] == ["-m", "venv"] or args[:1] == ["venv"]:
    os.makedirs(os.path.join(args[-1], "bin"))
    shutil.copy(sys.argv[0], os.path.join(args[-1], "bin", "python"))
if args[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
    state = os.environ.get("FAKE_STATE", "")
    print(state)
    sys.exit(0 if state else 1)
if args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
    states = os.environ["FAKE_QR_STATES"].split(",")
    asked = sum(c[:4] == args[:4] for c in map(json.loads, open(os.environ["RECORD"])))
    state = states[min(asked, len(states)) - 1]
    print(state)
    sys.exit(0 if state else 1)
"""


def run_script(script, args, env=None, cwd=REPO):
    base = {k: v for k, v in os.environ.items() if k not in PARAMETER_VARIABLES}
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          cwd=cwd, env={**base, **(env or {})}, timeout=120)


def commands(stdout):
    """The printed commands ('+ ' lines) as argument lists."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def gcloud_calls(stdout, verb):
    """The printed `gcloud compute tpus tpu-vm VERB ...` commands."""
    prefix = ["gcloud", "compute", "tpus", "tpu-vm", verb]
    return [c for c in commands(stdout) if c[:5] == prefix]


def remote(call):
    """The shell command that an `ssh ... --command CMD` call runs on the workers."""
    return call[call.index("--command") + 1]


@pytest.fixture
def recorder(tmp_path):
    """A bin/ folder with stand-in `gcloud` and `python3`, and the file they record to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gcloud", "python3"):
        path = bin_dir / name
        path.write_text(RECORDER.format(python=sys.executable))
        path.chmod(0o755)
    record = tmp_path / "calls.jsonl"
    # Without the machine's own uv, if any: the tests that want uv put a stand-in in bin/.
    path = [d for d in os.environ["PATH"].split(os.pathsep) if not Path(d, "uv").exists()]
    env = {"PATH": os.pathsep.join([str(bin_dir), *path]), "RECORD": str(record),
           "TMPDIR": str(tmp_path), "VENV": str(tmp_path / "venv")}

    def calls():
        if not record.exists():
            return []
        return [json.loads(line) for line in record.read_text().splitlines()]

    return env, calls


@pytest.fixture
def checkout(tmp_path):
    """A small git checkout: tracked, untracked and ignored files."""
    root = tmp_path / "checkout"
    for rel in ("setup.py", "configs/cifar10.py", "sagan_jax/main.py", "notes.txt",
                ".venv/lib/big.bin", "sagan_jax/__pycache__/main.pyc"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    (root / ".gitignore").write_text(".venv/\n__pycache__/\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "setup.py", "configs", "sagan_jax/main.py"],
                   check=True)
    return root
