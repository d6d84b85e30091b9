"""Test session set-up: four host CPU devices, so data-parallel code is exercised.

XLA reads the flags once, when jax first initialises its backends, so they are set here
before any test module imports jax. Single-device tests build their own one-device mesh.
The tests' programs are small and compiled once each, so XLA's expensive LLVM passes,
which about double the compile time on CPU, are switched off (same programs, same values).
"""
import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The CLI runs of the tests do not fill the user's persistent compilation cache
# (sagan_jax.startup); the tests that check the cache name their own folder.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "")
# torchvision / torch-fidelity import triton when it is installed (the CUDA build of
# torch); triton loaded after TensorFlow crashes the process, and the CPU tests never
# need it, so it is hidden for the whole session.
sys.modules.setdefault("triton", None)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "smoke: the subset that CI also runs on the oldest versions that the "
        "ranges allow and on Python 3.13 (`-m smoke`): the digits test config end to end, "
        "a resume, the score CLI. Needs neither PyTorch nor the notebook's tools.")
    config.addinivalue_line(
        "markers", "slow: tests that take long here (whole-driver runs of the bigger "
        "configs, several processes, the notebook, the launch scripts, the benchmarks); "
        "`-m 'not slow'` is the fast subset for development, CI runs everything.")
