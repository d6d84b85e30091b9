"""The start of `python -m sagan_jax.main`: one line saying what runs, nothing from
TensorFlow's start-up, and a second start that compiles nothing (JAX's persistent
compilation cache)."""
import os
import re
import subprocess
import sys

import flax
import jax
import pytest

from sagan_jax import startup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An absl log line of a Python logger: level, date, time, thread, file:line.
LOG_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ([\w.]+):\d+\] ")
NOISE = ("oneDNN", "cuInit", "absl::InitializeLog", "cudart_stub", "cpu_feature_guard",
         "rebuild TensorFlow", "Unable to initialize backend", "Type handler registry")


def main(workdir, cache, **env):
    """Runs the digits test config as a user would: TF's log level not set."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("TF_CPP_MIN_LOG_LEVEL", "JAX_COMPILATION_CACHE_DIR")}
    result = subprocess.run(
        [sys.executable, "-m", "sagan_jax.main", "--config=configs/digits.py:test",
         f"--workdir={workdir}", f"--config.train.compile_cache_dir={cache}"],
        cwd=REPO, env={**environ, **env}, capture_output=True, text=True, timeout=900,
        check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr.splitlines()


@pytest.mark.slow
def test_a_quiet_start_and_a_second_start_that_compiles_nothing(tmp_path):
    cache = tmp_path / "cache"
    lines = main(tmp_path / "first", cache)
    # Only Python log lines (the project's, clu's metrics, real warnings): nothing from
    # TensorFlow's C++ start-up, JAX's backend search or orbax's type registry.
    assert [line for line in lines if not LOG_LINE.match(line)] == []
    assert [line for line in lines if any(noise in line for noise in NOISE)] == []
    started = [line for line in lines if "startup.py" in line]
    assert len(started) == 1
    assert started[0].split("] ", 1)[1] == (
        f"jax {jax.__version__}, flax {flax.__version__}; backend cpu: {jax.device_count()} "
        f"device(s) (cpu), 1 process(es); compilation cache: {cache}")
    entries = sorted(os.listdir(cache))
    assert entries

    # The same run again, with JAX logging each persistent-cache hit and explaining each
    # miss: every program comes from the cache, and the cache gains nothing.
    lines = main(tmp_path / "second", cache, JAX_LOG_COMPILES="1", JAX_EXPLAIN_CACHE_MISSES="1")
    hits = [line for line in lines if "Persistent compilation cache hit for" in line]
    assert [line for line in lines if "PERSISTENT COMPILATION CACHE MISS" in line] == []
    assert len(hits) == len(entries)
    assert sorted(os.listdir(cache)) == entries
    grid = os.path.join("samples", "step_0000003.png")  # The cached programs' results.
    assert (tmp_path / "second" / grid).read_bytes() == (tmp_path / "first" / grid).read_bytes()


@pytest.mark.parametrize("setting, environ, expected", [
    ("off", {"JAX_COMPILATION_CACHE_DIR": "/jax"}, None),
    ("gs://bucket/jax_cache", {}, "gs://bucket/jax_cache"),
    ("/runs/cache", {"JAX_COMPILATION_CACHE_DIR": "/jax"}, "/runs/cache"),
    ("", {"JAX_COMPILATION_CACHE_DIR": "/jax", "XDG_CACHE_HOME": "/xdg"}, "/jax"),
    ("", {"JAX_COMPILATION_CACHE_DIR": ""}, None),  # JAX's variable, set empty: no cache.
    ("", {"XDG_CACHE_HOME": "/xdg"}, "/xdg/sagan_jax/jax_compilation_cache"),
    ("", {}, os.path.expanduser("~/.cache/sagan_jax/jax_compilation_cache")),
])
def test_where_the_compilation_cache_lives(setting, environ, expected):
    assert startup.compilation_cache_dir(setting, environ) == expected


def test_only_tensorflows_start_up_lines_are_held_back(capfd):
    tf_start = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to "
        "STDERR\n"
        "I0000 00:00:1796366927.179539    4058 port.cc:153] oneDNN custom operations are on. "
        "You may see slightly different numerical results.\n"
        "I0000 00:00:1796366927.180597    4058 cudart_stub.cc:31] Could not find cuda drivers "
        "on your machine, GPU will not be used.\n"
        "I0000 00:00:1796366986.841530    6387 cpu_feature_guard.cc:227] This TensorFlow binary "
        "is optimized to use available CPU instructions in performance-critical operations.\n"
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.\n"
        "E0000 00:00:1796366928.343356    4058 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n")
    real = "E0000 00:00:1796366928.9    4058 env.cc:7] a real error of TensorFlow\n"
    with startup._filtered_stderr(startup._TF_NOISE):  # pylint: disable=protected-access
        os.write(2, (tf_start + real).encode())
    assert capfd.readouterr().err == real
