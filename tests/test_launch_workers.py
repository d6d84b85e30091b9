"""launch/tpu_pod.sh: a slice through a queued resource (requested, waited for, requeued
after a preemption), and what its commands do on a worker (the venv's Python, the TPU
check), run in a stand-in home directory."""
import os
import re
import socket
import subprocess
import sys
import tarfile

import pytest
from launch_fakes import TPU_POD, V4_32, commands, gcloud_calls, remote, run_script
from launch_fakes import checkout, recorder  # noqa: F401 -- fixtures.

V5E_16 = ["--name=sagan-v5e", "--zone=us-west4-a", "--accelerator-type=v5litepod-16",
          "--config=configs/cifar10.py:case=2", "--workdir=gs://my-bucket/cifar10_case2"]
QR = ["compute", "tpus", "queued-resources"]
QR_CREATE = [*QR, "create", "sagan-v5e", "--node-id=sagan-v5e", "--zone=us-west4-a",
             "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite",
             "--spot"]
QR_DESCRIBE = [*QR, "describe", "sagan-v5e", "--zone=us-west4-a", "--format=value(state.state)"]
QR_DELETE = [*QR, "delete", "sagan-v5e", "--zone=us-west4-a", "--force", "--quiet"]


def test_queued_spot_dry_run_v5e_16(recorder):
    env, calls = recorder
    result = run_script(TPU_POD, ["--queued", "--spot", "--dry-run", *V5E_16], env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert calls() == []
    out = result.stdout
    describe, create, _, scp, install, check, start = commands(out)
    assert describe == ["gcloud", *QR_DESCRIBE]
    assert create == ["gcloud", *QR_CREATE]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
    assert ("# until sagan-v5e is ACTIVE, every 30 s: gcloud compute tpus queued-resources"
            " describe sagan-v5e --zone=us-west4-a") in out
    assert gcloud_calls(out, "create") == []  # No `tpu-vm create`.
    assert [remote(c).split()[0] for c in (install, check, start)] == ["set", "cd", "cd"]
    assert ("# delete: gcloud compute tpus queued-resources delete sagan-v5e"
            " --zone=us-west4-a --force") in out


def slice_steps(calls):
    """The calls as steps: the queued resource's verbs, 'node' for a `tpu-vm describe`."""
    return [c[3] if c[2] == "queued-resources" else "node" if c[3] == "describe" else c[3]
            for c in calls]


@pytest.mark.parametrize("qr_states, node_state, steps, shown", [
    # None yet: requested, then its state shown as it changes until ACTIVE.
    (",WAITING_FOR_RESOURCES,WAITING_FOR_RESOURCES,PROVISIONING,ACTIVE", "",
     ["describe", "create", "describe", "describe", "describe", "describe"],
     ["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"]),
    # Preempted, as the queued resource says: deleted and requested again.
    ("SUSPENDED,WAITING_FOR_RESOURCES,ACTIVE", "",
     ["describe", "delete", "create", "describe", "describe"],
     ["WAITING_FOR_RESOURCES", "ACTIVE"]),
    # Preempted, as its node says while the queued resource is still ACTIVE.
    ("ACTIVE,PROVISIONING,ACTIVE", "PREEMPTED",
     ["describe", "node", "delete", "create", "describe", "describe"],
     ["PROVISIONING", "ACTIVE"]),
    # A request that failed in an earlier run is made again.
    ("FAILED,ACTIVE", "", ["describe", "delete", "create", "describe"], ["ACTIVE"]),
    # Still queued from an earlier run: waited for, not requested twice.
    ("PROVISIONING,ACTIVE", "", ["describe", "describe"], ["ACTIVE"]),
    # Ready: reused.
    ("ACTIVE", "READY", ["describe", "node"], []),
])
def test_queued_requests_waits_and_requeues(recorder, checkout, qr_states, node_state, steps,
                                            shown):
    env, calls = recorder
    args = ["--queued", "--spot", "--poll=0", *V5E_16, f"--repo={checkout}"]
    result = run_script(TPU_POD, args, {**env, "FAKE_QR_STATES": qr_states,
                                        "FAKE_STATE": node_state})
    assert result.returncode == 0, result.stderr
    assert slice_steps(calls()) == [*steps, "scp", "ssh", "ssh", "ssh"]
    assert [c for c in calls() if c[3] in ("create", "delete")] == (
        [QR_DELETE] * ("delete" in steps) + [QR_CREATE] * ("create" in steps))
    assert re.findall(r"^# sagan-v5e: (\S+) after \d+ s$", result.stdout, re.M) == shown
    # Every call but the repeated describes of the wait is printed before it runs.
    polls = [i for i, c in enumerate(calls()) if c == QR_DESCRIBE][1:]
    printed = [c[1:] for c in commands(result.stdout) if c[0] == "gcloud"]
    assert printed == [c for i, c in enumerate(calls()) if i not in polls]


@pytest.mark.parametrize("state", ["FAILED", "SUSPENDED"])
def test_queued_failure_while_waiting_one_line(recorder, checkout, state):
    env, calls = recorder
    args = ["--queued", "--spot", "--poll=0", *V5E_16, f"--repo={checkout}"]
    result = run_script(TPU_POD, args, {**env, "FAKE_QR_STATES": f",WAITING_FOR_RESOURCES,{state}"})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"tpu_pod.sh: error: the queued resource sagan-v5e is {state} (the reason: gcloud"
        " compute tpus queued-resources describe sagan-v5e --zone=us-west4-a); rerun this"
        " command to queue it again"]
    assert slice_steps(calls()) == ["describe", "create", "describe", "describe"]


@pytest.mark.parametrize("qr_state, node_state", [("ACTIVE", "REPAIRING"), ("DELETING", "")])
def test_queued_busy_one_line(recorder, checkout, qr_state, node_state):
    """A slice or request in between states is left alone: nothing deleted or created."""
    env, calls = recorder
    args = ["--queued", "--poll=0", *V5E_16, f"--repo={checkout}"]
    result = run_script(TPU_POD, args, {**env, "FAKE_QR_STATES": qr_state,
                                        "FAKE_STATE": node_state})
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert f"is {node_state or qr_state}: wait" in result.stderr
    assert "queued-resources delete sagan-v5e --zone=us-west4-a --force)" in result.stderr
    assert {c[3] for c in calls()} == {"describe"}


def test_queued_resource_gone_while_waiting_one_line(recorder, checkout):
    env, calls = recorder
    args = ["--queued", "--poll=0", *V5E_16, f"--repo={checkout}"]
    result = run_script(TPU_POD, args, {**env, "FAKE_QR_STATES": ",WAITING_FOR_RESOURCES,"})
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert "five describes of the queued resource sagan-v5e in a row failed" in result.stderr
    assert slice_steps(calls()) == ["describe", "create", *["describe"] * 6]


def test_internal_ips(recorder):
    env, _ = recorder
    out = run_script(TPU_POD, ["--dry-run", "--queued", "--internal-ips", *V5E_16], env).stdout
    printed = [c for c in commands(out) if c[0] == "gcloud"]
    assert printed[1][-1] == "--internal-ips"  # The queued resource's create.
    for call in printed[2:]:  # scp and ssh reach the workers by their internal IPs.
        assert "--internal-ip" in call
    assert "only-managed" not in remote(printed[-3])  # No Python download.
    direct = run_script(TPU_POD, ["--dry-run", "--internal-ips", *V5E_16], env).stdout
    assert gcloud_calls(direct, "create")[0][-1] == "--internal-ips"


FAKE_UV = """#!{python}
import os, sys
with open(os.path.expanduser("~/uv.calls"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[sys.argv.index("--python-preference") + 1] not in os.environ["UV_FINDS"]:
    sys.exit(2)
os.makedirs(os.path.join(sys.argv[-1], "bin"))
pip = os.path.join(sys.argv[-1], "bin", "pip")
with open(pip, "w") as f:
    f.write('#!/bin/sh\\necho "$0 $*" >> ~/pip.calls\\n')
os.chmod(pip, 0o755)
"""


@pytest.mark.parametrize("flags, uv_finds, preferences, error", [
    # The image has a Python 3.11+: used, nothing downloaded.
    ([], "only-system", ["only-system"], None),
    # It has none (TPU VM images ship 3.10): uv downloads 3.12.
    ([], "only-managed", ["only-system", "only-managed"], None),
    (["--python=3.13"], "only-managed", ["only-system", "only-managed"], None),
    # No way out: no download, and one line that says what to provide.
    (["--internal-ips"], "only-managed", ["only-system"], "no Python >=3.11 here (TPU VM"
     " images ship 3.10): give --python=PATH of a Python 3.11+ on the workers, or an image"
     " that has one"),
    (["--python=/opt/py/bin/python3"], "only-managed", ["only-system"],
     "no Python /opt/py/bin/python3 here"),
    ([], "", ["only-system", "only-managed"], "no Python >=3.11 here (TPU VM images ship"
     " 3.10) and no download of Python 3.12: give --python=PATH"),
])
def test_worker_venv_python(tmp_path, flags, uv_finds, preferences, error):
    """The install command, run in a stand-in home with a stand-in uv."""
    out = run_script(TPU_POD, ["--dry-run", *V4_32, *flags]).stdout
    install = remote(gcloud_calls(out, "ssh")[0])
    uv = tmp_path / ".local" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    uv.write_text(FAKE_UV.format(python=sys.executable))
    uv.chmod(0o755)
    with tarfile.open(tmp_path / "sagan_jax.tgz", "w:gz"):
        pass  # The project's files do not matter here.
    result = subprocess.run(["bash", "-c", install], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HOME": str(tmp_path), "UV_FINDS": uv_finds})
    asked = (tmp_path / "uv.calls").read_text().splitlines()
    assert [a.split("--python-preference ")[1].split()[0] for a in asked] == preferences
    wanted = next((f[len("--python="):] for f in flags if f.startswith("--python=")), None)
    assert [a.split("--python ")[1].split()[0] for a in asked] == [
        wanted or ">=3.11", wanted or "3.12"][:len(asked)]
    if error:
        assert result.returncode == 1
        assert result.stderr.splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith(f"{socket.gethostname()}: error: {error}")
        assert not (tmp_path / "pip.calls").exists()
    else:
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "pip.calls").read_text() == (
            f"{tmp_path}/sagan_jax_venv/bin/pip install -q -e .[tpu]\n")


def test_worker_tpu_check(tmp_path):
    """The check, run in a stand-in home: with this machine's JAX, which finds no TPU, one
    line naming the fix; with a stand-in for a TPU worker's, the chips it reports."""
    out = run_script(TPU_POD, ["--dry-run", *V4_32]).stdout
    check = remote(gcloud_calls(out, "ssh")[1])
    python = tmp_path / "sagan_jax_venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    (tmp_path / "sagan_jax").mkdir()
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path)}
    host = socket.gethostname()
    no_tpu = subprocess.run(["bash", "-c", check], env=env, capture_output=True, text=True,
                            timeout=120)
    assert no_tpu.returncode == 1
    assert no_tpu.stdout == ""
    [line] = no_tpu.stderr.splitlines()
    assert line.startswith(f"{host}: error: JAX sees no TPU (") and "tpu" in line[40:]
    assert line.endswith("): reinstall with ~/sagan_jax_venv/bin/pip install -U -e '.[tpu]'"
                         " in ~/sagan_jax")
    python.write_text('#!/bin/sh\necho "I1204 libtpu: 4 chips" >&2\n'
                      'echo "JAX 0.12.0 sees 4 x TPU v4"\n')
    tpu = subprocess.run(["bash", "-c", check], env=env, capture_output=True, text=True,
                         timeout=30)
    assert tpu.returncode == 0, tpu.stderr
    assert tpu.stdout == f"{host}: JAX 0.12.0 sees 4 x TPU v4\n"
    # A run going on the worker holds its TPU: the check says so and asks nothing of JAX.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "sagan_jax.pid").write_text(str(sleeper.pid))
        busy = subprocess.run(["bash", "-c", check], env=env, capture_output=True, text=True,
                              timeout=30)
        assert busy.returncode == 1
        assert busy.stderr == f"a run is going on {host}: pid {sleeper.pid}\n"
    finally:
        sleeper.kill()
        sleeper.wait()
