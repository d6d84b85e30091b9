"""launch/tpu_pod.sh (a slice created at once) and launch/gpu.sh: the commands they
print, run and refuse. The queued slice and the workers' steps: test_launch_workers.py.
"""
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from launch_fakes import GPU, REPO, TPU_POD, V4_32, commands, gcloud_calls, remote, run_script
from launch_fakes import checkout, recorder  # noqa: F401 -- fixtures.


def test_tpu_pod_dry_run_v4_32(recorder):
    env, calls = recorder
    result = run_script(TPU_POD, ["--dry-run", "--logs", *V4_32], env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert calls() == []  # Not even `describe` runs.
    out = result.stdout
    assert "assuming that sagan-v4 does not exist" in out
    where = ["--zone=us-central2-b", "--project=my-project"]
    [describe] = gcloud_calls(out, "describe")
    assert describe[5:8] == ["sagan-v4", *where]
    [create] = gcloud_calls(out, "create")
    assert create[5:] == ["sagan-v4", *where, "--accelerator-type=v4-32",
                          "--version=tpu-ubuntu2204-base"]
    archive = f"{env['TMPDIR']}/sagan_jax-sagan-v4.tgz"
    [scp] = gcloud_calls(out, "scp")
    assert scp[5:] == [archive, "sagan-v4:sagan_jax.tgz", *where, "--worker=all"]
    install, check, start, logs = gcloud_calls(out, "ssh")
    for call in (install, check, start, logs):
        assert call[5:9] == ["sagan-v4", *where, "--worker=all"]
    assert 'pip install -q -e ".[tpu]"' in remote(install)
    assert "tar -xzf ~/sagan_jax.tgz -C ~/sagan_jax" in remote(install)
    assert "JAX_PLATFORMS=tpu ~/sagan_jax_venv/bin/python -c" in remote(check)
    assert ("nohup ~/sagan_jax_venv/bin/python -m sagan_jax.main"
            " --config=configs/cifar10.py:case=2 --workdir=gs://my-bucket/cifar10_case2"
            " --config.data.data_dir=gs://my-bucket/tfds > ~/sagan_jax.log") in remote(start)
    assert remote(logs).startswith("tail -n +1 -F ~/sagan_jax.log")
    # The order of the steps: slice, copy, install, check, start, logs.
    lines = [line for line in out.splitlines() if line.startswith("+ ")]
    order = [commands(out).index(c) for c in (create, scp, install, check, start, logs)]
    assert order == sorted(order)
    assert f"| tar -czf {archive} -C {REPO} --null -T -" in lines[order[0] + 1]


def test_tpu_pod_parameters_from_environment():
    env = {"TPU_NAME": "sagan-v4", "ZONE": "us-central2-b", "PROJECT": "my-project",
           "ACCELERATOR_TYPE": "v4-32", "CONFIG": "configs/cifar10.py:case=2",
           "WORKDIR": "gs://my-bucket/cifar10_case2", "DATA_DIR": "gs://my-bucket/tfds"}
    by_env = run_script(TPU_POD, ["--dry-run", "--logs"], env)
    by_flags = run_script(TPU_POD, ["--dry-run", "--logs", *V4_32])
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == by_flags.stdout


def test_tpu_pod_without_logs_streams_nothing():
    out = run_script(TPU_POD, ["--dry-run", *V4_32]).stdout
    assert [remote(c).split()[0] for c in gcloud_calls(out, "ssh")] == ["set", "cd", "cd"]


def test_tpu_pod_git_url_spot_and_main_flags():
    args = [*V4_32, "--accelerator-type=v5litepod-16", "--spot",
            "--repo=https://example.org/sagan_jax.git", "--python=3.11",
            "--", "--config.train.batch_size=512"]
    result = run_script(TPU_POD, ["--dry-run", *args])
    assert result.returncode == 0, result.stderr
    [create] = gcloud_calls(result.stdout, "create")
    assert create[-3:] == ["--accelerator-type=v5litepod-16",
                           "--version=v2-alpha-tpuv5-lite", "--spot"]
    assert gcloud_calls(result.stdout, "scp") == []
    install, _, start = gcloud_calls(result.stdout, "ssh")
    assert "git clone https://example.org/sagan_jax.git ~/sagan_jax" in remote(install)
    # The image's Python 3.11 where it has one, else a downloaded one.
    assert ("uv venv -q --seed --python-preference only-system --python 3.11 ~/sagan_jax_venv"
            " || ~/.local/bin/uv venv -q --seed --python-preference only-managed --python 3.11"
            " ~/sagan_jax_venv;") in remote(install)
    assert "--config.data.data_dir=gs://my-bucket/tfds --config.train.batch_size=512 >" \
        in remote(start)


@pytest.mark.parametrize("state, verbs", [
    ("", ["describe", "create", "scp", "ssh", "ssh", "ssh", "ssh"]),
    ("READY", ["describe", "scp", "ssh", "ssh", "ssh", "ssh"]),
    ("PREEMPTED", ["describe", "delete", "create", "scp", "ssh", "ssh", "ssh", "ssh"]),
])
def test_tpu_pod_runs_what_the_dry_run_prints(recorder, checkout, state, verbs):
    env, calls = recorder
    args = ["--logs", *V4_32, f"--repo={checkout}"]
    result = run_script(TPU_POD, args, {**env, "FAKE_STATE": state})
    assert result.returncode == 0, result.stderr
    assert [c[3] for c in calls()] == verbs
    printed = [c[1:] for c in commands(result.stdout) if c[0] == "gcloud"]
    assert calls() == printed
    if state != "":  # The dry run assumes a missing slice: compare it with that run.
        return
    dry = run_script(TPU_POD, ["--dry-run", *args], env)
    assert commands(dry.stdout) == commands(result.stdout)
    with tarfile.open(Path(env["TMPDIR"], "sagan_jax-sagan-v4.tgz")) as archive:
        names = {Path(n).as_posix() for n in archive.getnames()}
    assert names == {"setup.py", "configs/cifar10.py", "sagan_jax/main.py", "notes.txt",
                     ".gitignore"}


@pytest.mark.parametrize("change, expected", [
    (["--workdir=/tmp/run"], "gs://"),
    (["--workdir=my-bucket/run"], "gs://"),
    (["--data-dir=/data/tfds"], "--data-dir"),
    (["--accelerator-type=v4_32"], "--accelerator-type"),
    (["--accelerator-type=v4"], "--accelerator-type"),
    (["--name=Sagan_V4"], "--name"),
    (["--zone=central"], "--zone"),
    (["--config=configs/nope.py"], "configs/nope.py"),
    (["--repo=/does/not/exist"], "--repo"),
    (["--python=3.10"], "3.11"),
    (["--python=python3.12"], "--python"),
    (["--poll=soon"], "--poll"),
    (["--data-dir=gs://tfds-data/datasets"], "try_gcs"),
    (["--data-dir=gs://tfds-data"], "read-only"),
    (["--accelerator-type=v7-8"], "--version"),
    (["--bogus=1"], "--bogus"),
    (["extra"], "extra"),
    (["--spot=yes"], "--spot"),
    (["--zone"], "--zone"),
])
def test_tpu_pod_bad_parameter_one_line(change, expected):
    result = run_script(TPU_POD, ["--dry-run", *V4_32, *change])
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert expected in result.stderr


@pytest.mark.parametrize("missing, expected", [
    ("--name", "TPU_NAME"), ("--zone", "ZONE"), ("--accelerator-type", "ACCELERATOR_TYPE"),
    ("--config", "CONFIG"), ("--workdir", "WORKDIR"),
])
def test_tpu_pod_missing_parameter_one_line(missing, expected):
    args = [a for a in V4_32 if not a.startswith(missing + "=")]
    result = run_script(TPU_POD, ["--dry-run", *args])
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert expected in result.stderr


def test_help_exits_zero():
    for script in (TPU_POD, GPU):
        result = run_script(script, ["--help"])
        assert result.returncode == 0
        assert "--dry-run" in result.stdout and "set -euo" not in result.stdout


@pytest.mark.parametrize("script,switch", [(GPU, "--install"), (TPU_POD, "--spot")])
@pytest.mark.parametrize("args,expected", [
    (["{switch}=1"], "{switch} takes no value"),
    (["--config"], "--config needs a value"),
    (["--colour", "red"], "unknown argument --colour (see --help)"),
])
def test_malformed_arguments_one_line(script, switch, args, expected):
    result = run_script(script, ["--dry-run", *(a.format(switch=switch) for a in args)])
    assert result.returncode == 2
    assert result.stderr.strip() == f"{script.name}: error: {expected.format(switch=switch)}"


GPU_ARGS = ["--config=configs/cifar10.py:case=2", "--workdir=/runs/cifar10_case2"]


def test_gpu_one_machine_dry_run(tmp_path):
    args = ["--dry-run", *GPU_ARGS, "--", "--config.train.batch_size=128"]
    result = run_script(GPU, args, {"VENV": str(tmp_path / "no-venv")})
    assert result.returncode == 0, result.stderr
    check, main = commands(result.stdout)
    assert check[:2] == ["python3", "-c"] and 'default_backend() == "gpu"' in check[2]
    assert main == ["python3", "-m", "sagan_jax.main", "--config=configs/cifar10.py:case=2",
                    "--workdir=/runs/cifar10_case2", "--config.train.batch_size=128"]


def test_gpu_install_and_multi_node_dry_run(recorder):
    env, calls = recorder
    args = ["--dry-run", "--install", *GPU_ARGS, "--data-dir=gs://my-bucket/tfds",
            "--nodes=2", "--node-rank=1", "--coordinator=10.0.0.2:1234"]
    result = run_script(GPU, args, {**env, "PYTHON": "python3.12"})
    assert result.returncode == 0, result.stderr
    assert calls() == []
    venv_python = f"{env['VENV']}/bin/python"
    make, install, check, main = commands(result.stdout)
    assert make == ["python3.12", "-m", "venv", env["VENV"]]
    assert install == [venv_python, "-m", "pip", "install", "-e", f"{REPO}[gpu]"]
    assert check[0] == venv_python
    assert main == [venv_python, "-m", "sagan_jax.main", "--config=configs/cifar10.py:case=2",
                    "--workdir=/runs/cifar10_case2", "--config.data.data_dir=gs://my-bucket/tfds",
                    "--coordinator_address=10.0.0.2:1234", "--num_processes=2",
                    "--process_id=1"]


def test_gpu_runs_what_the_dry_run_prints(recorder):
    env, calls = recorder
    args = ["--install", *GPU_ARGS, "--nodes=3", "--node-rank=2", "--coordinator=head:9999"]
    dry = run_script(GPU, ["--dry-run", *args], env)
    real = run_script(GPU, args, env)
    assert real.returncode == 0, real.stderr
    assert commands(real.stdout) == commands(dry.stdout)
    assert calls() == [c[1:] for c in commands(dry.stdout)]
    assert [c[:2] for c in calls()] == [["-m", "venv"], ["-m", "pip"], ["-c", dry_check(dry)],
                                        ["-m", "sagan_jax.main"]]
    # Made once: later runs, with --install or without, use the venv's python.
    for again in (args, args[1:]):
        rerun = run_script(GPU, again, env)
        assert {c[0] for c in commands(rerun.stdout)} == {f"{env['VENV']}/bin/python"}
        assert ["-m", "venv"] not in [c[:2] for c in commands(rerun.stdout)]


def dry_check(result):
    """The source of the GPU check in a run's printed commands."""
    return next(c[2] for c in commands(result.stdout) if c[1] == "-c")


def test_gpu_install_with_uv(recorder):
    """Where uv is on PATH, it makes the venv (no ensurepip needed) and installs into it."""
    env, calls = recorder
    bin_dir = Path(env["PATH"].split(os.pathsep)[0])
    (bin_dir / "uv").write_text((bin_dir / "python3").read_text())
    (bin_dir / "uv").chmod(0o755)
    result = run_script(GPU, ["--install", *GPU_ARGS], env)
    assert result.returncode == 0, result.stderr
    venv_python = f"{env['VENV']}/bin/python"
    assert commands(result.stdout)[:2] == [
        ["uv", "venv", "--python", "python3", env["VENV"]],
        ["uv", "pip", "install", "--python", venv_python, "-e", f"{REPO}[gpu]"]]
    assert calls() == [c[1:] for c in commands(result.stdout)]


@pytest.mark.parametrize("fake, expected", [
    ({"FAKE_PYTHON_VERSION": "3.10"}, "python3 is Python 3.10; sagan_jax needs 3.11 or newer:"
                                      " set PYTHON to one, e.g. PYTHON=python3.12"),
    ({"FAKE_PYTHON_VERSION": "2.7"}, "python3 is Python 2.7; sagan_jax needs 3.11 or newer"),
    ({"FAKE_ENSUREPIP": "0"}, "python3 cannot make a venv (no ensurepip): install uv"),
])
def test_gpu_install_checks_the_interpreter(recorder, fake, expected):
    """Before anything runs: one line, exit 2, and no venv."""
    env, calls = recorder
    result = run_script(GPU, ["--install", *GPU_ARGS], {**env, **fake})
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"gpu.sh: error: {expected}")
    assert calls() == []
    assert not Path(env["VENV"]).exists()


def test_gpu_install_into_an_existing_venv_skips_the_check(recorder):
    """The venv's own Python was checked when it was made; $PYTHON is not asked again."""
    env, calls = recorder
    first = run_script(GPU, ["--install", *GPU_ARGS], env)
    assert first.returncode == 0, first.stderr
    again = run_script(GPU, ["--install", *GPU_ARGS], {**env, "FAKE_PYTHON_VERSION": "3.10"})
    assert again.returncode == 0, again.stderr
    assert [c[:2] for c in commands(again.stdout)] == [
        [f"{env['VENV']}/bin/python", "-m"], [f"{env['VENV']}/bin/python", "-c"],
        [f"{env['VENV']}/bin/python", "-m"]]


@pytest.mark.parametrize("args, expected", [
    (GPU_ARGS[1:], "CONFIG"),
    (GPU_ARGS[:1], "WORKDIR"),
    ([*GPU_ARGS[1:], "--config=configs/nope.py"], "configs/nope.py"),
    ([*GPU_ARGS, "--nodes=2", "--node-rank=0"], "--coordinator"),
    ([*GPU_ARGS, "--nodes=2", "--coordinator=10.0.0.2:1234"], "NODE_RANK"),
    ([*GPU_ARGS, "--nodes=2", "--node-rank=2", "--coordinator=h:1"], "0..1"),
    ([*GPU_ARGS, "--nodes=2", "--node-rank=0", "--coordinator=10.0.0.2"], "HOST:PORT"),
    ([*GPU_ARGS, "--coordinator=10.0.0.2:1234"], "--nodes"),
    ([*GPU_ARGS, "--nodes=zero"], "--nodes"),
    ([*GPU_ARGS, "--gpus=8"], "--gpus"),
    ([*GPU_ARGS, "--install=yes"], "--install"),
])
def test_gpu_bad_parameter_one_line(args, expected):
    result = run_script(GPU, ["--dry-run", *args])
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert expected in result.stderr


def test_tpu_pod_worker_commands_parse():
    out = run_script(TPU_POD, ["--dry-run", "--logs", *V4_32]).stdout
    for call in gcloud_calls(out, "ssh"):
        check = subprocess.run(["bash", "-n", "-c", remote(call)], capture_output=True, text=True)
        assert check.returncode == 0, (remote(call), check.stderr)


def test_tpu_pod_start_command_on_a_worker(tmp_path):
    """The start command, run in a stand-in home: detaches, records the pid, logs, and
    refuses to start a second run while the first is going."""
    out = run_script(TPU_POD, ["--dry-run", *V4_32]).stdout
    start = remote(gcloud_calls(out, "ssh")[2])
    python = tmp_path / "sagan_jax_venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/usr/bin/env bash\necho "args: $*"\nexec sleep 60\n')
    python.chmod(0o755)
    (tmp_path / "sagan_jax").mkdir()
    env = {**os.environ, "HOME": str(tmp_path)}
    first = subprocess.run(["bash", "-c", start], env=env, capture_output=True, text=True,
                           timeout=30)
    pid = int((tmp_path / "sagan_jax.pid").read_text())
    try:
        assert first.returncode == 0, first.stderr
        second = subprocess.run(["bash", "-c", start], env=env, capture_output=True,
                                text=True, timeout=30)
        assert second.returncode == 1
        assert f"pid {pid}" in second.stderr
        log = tmp_path / "sagan_jax.log"
        for _ in range(100):  # The detached process writes its first line soon.
            if log.read_text():
                break
            time.sleep(0.1)
        assert log.read_text().startswith(
            "args: -m sagan_jax.main --config=configs/cifar10.py:case=2"
            " --workdir=gs://my-bucket/cifar10_case2")
    finally:
        os.kill(pid, 15)
