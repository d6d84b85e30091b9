"""The backend check: JAX on the CPU of a machine with a GPU or TPU stops with the install
that fixes it, from faked device listings and faked installed versions."""
import os
import stat

import pytest

from sagan_jax import backend

A100 = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5f8c2a1e-0000-0000-0000-000000000000)\n"
# The requirements that jax 0.10.2 declares (importlib.metadata.requires("jax")), in part.
JAX_REQUIRES = [
    "jaxlib<=0.10.2,>=0.10.1",
    'jaxlib<=0.10.2,>=0.10.2; extra == "tpu"',
    'libtpu==0.0.42.*; extra == "tpu"',
    'jax-cuda12-plugin[with-cuda]<=0.10.2,>=0.10.2; extra == "cuda12"',
]
GPU = ("gpu", "nvidia-smi lists 1 GPU(s) (GPU 0: NVIDIA A100-SXM4-40GB)")
TPU = ("tpu", "TPU chips show as /dev/vfio/0")


def no_gpu():
    return ""


def test_a_gpu_is_what_nvidia_smi_lists(tmp_path):
    listing = A100 + A100.replace("GPU 0", "GPU 1")
    assert backend.present_accelerator(lambda: listing, str(tmp_path)) == (
        "gpu", "nvidia-smi lists 2 GPU(s) (GPU 0: NVIDIA A100-SXM4-40GB)")
    # nvidia-smi's answer where the driver is installed but no GPU is attached.
    assert backend.present_accelerator(lambda: "No devices found.\n", str(tmp_path)) is None


def test_the_real_listing_runs_nvidia_smi_from_the_path(tmp_path, monkeypatch):
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] && printf '{A100.strip()}\\n'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert backend.present_accelerator(dev=str(tmp_path / "dev"))[0] == "gpu"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # No nvidia-smi at all.
    assert backend.present_accelerator(dev=str(tmp_path / "dev")) is None


def test_tpu_chips_are_accel_or_numbered_vfio_devices(tmp_path):
    dev = tmp_path / "dev"
    (dev / "vfio").mkdir(parents=True)
    (dev / "vfio" / "vfio").touch()  # The VFIO control device of any machine: no TPU.
    assert backend.present_accelerator(no_gpu, str(dev)) is None
    (dev / "vfio" / "0").touch()
    (dev / "vfio" / "1").touch()
    assert backend.present_accelerator(no_gpu, str(dev)) == (
        "tpu", f"TPU chips show as {dev}/vfio/0, {dev}/vfio/1")
    for name in ("accel0", "accel1"):  # TPU v2-v4.
        (dev / name).touch()
    assert backend.present_accelerator(no_gpu, str(dev))[1].startswith(
        f"TPU chips show as {dev}/accel0, {dev}/accel1, ")


@pytest.mark.parametrize("accelerator, versions, fix", [
    # Nothing but the CPU build of jax: the project's extra.
    (GPU, {"jax": "0.10.2", "jaxlib": "0.10.2"}, 'pip install -U -e ".[gpu]" (JAX\'s GPU build)'),
    (TPU, {"jax": "0.10.2", "jaxlib": "0.10.2"}, 'pip install -U -e ".[tpu]" (JAX\'s TPU build)'),
    # Colab's GPU runtime after pip upgraded jax over its preinstalled plugin.
    (GPU, {"jax": "0.10.2", "jaxlib": "0.10.2", "jax-cuda12-plugin": "0.7.2"},
     'jax-cuda12-plugin 0.7.2 does not match jax 0.10.2 (which needs '
     'jax-cuda12-plugin==0.10.2): pip install -U "jax[cuda12]==0.10.2"'),
    (GPU, {"jax": "0.10.2", "jaxlib": "0.10.2", "jax-cuda13-plugin": "0.10.1"},
     'jax-cuda13-plugin 0.10.1 does not match jax 0.10.2 (which needs '
     'jax-cuda13-plugin==0.10.2): pip install -U "jax[cuda13]==0.10.2"'),
    # Colab's TPU runtime likewise: jax pins its libtpu.
    (TPU, {"jax": "0.10.2", "jaxlib": "0.10.2", "libtpu": "0.0.21.1"},
     'libtpu 0.0.21.1 does not match jax 0.10.2 (which needs libtpu==0.0.42.*): '
     'pip install -U "jax[tpu]==0.10.2"'),
    # A matching plugin is not the problem: JAX's own warning says what is.
    (TPU, {"jax": "0.10.2", "jaxlib": "0.10.2", "libtpu": "0.0.42.1"},
     "libtpu 0.0.42.1 matches jax 0.10.2, so see JAX's warning above for why it did not "
     "start (the TPU held by another process)"),
    (GPU, {"jax": "0.10.2", "jaxlib": "0.10.2", "jax-cuda12-plugin": "0.10.2"},
     "jax-cuda12-plugin 0.10.2 matches jax 0.10.2, so see JAX's warning above for why it did "
     "not start (an NVIDIA driver too old for its CUDA, CUDA_VISIBLE_DEVICES)"),
])
def test_jax_on_the_cpu_of_an_accelerator_machine_names_the_fix(accelerator, versions, fix):
    with pytest.raises(ValueError) as e:
        backend.check("cpu", False, accelerator, versions, JAX_REQUIRES)
    assert str(e.value) == (f"JAX runs on the CPU, but {accelerator[1]}: {fix}; or pass "
                            "--allow_cpu to run on the CPU.")


def test_allow_cpu_an_accelerator_backend_and_a_plain_cpu_machine_pass():
    versions = {"jax": "0.10.2", "jaxlib": "0.10.2"}
    backend.check("cpu", True, GPU, versions, JAX_REQUIRES)  # --allow_cpu.
    backend.check("gpu", False, GPU, versions, JAX_REQUIRES)
    backend.check("tpu", False, TPU, versions, JAX_REQUIRES)
    backend.check("cpu", False, None, versions, JAX_REQUIRES)


def test_installed_versions_are_those_of_the_running_packages():
    import jax  # pylint: disable=g-import-not-at-top
    import jaxlib  # pylint: disable=g-import-not-at-top

    versions = backend.installed_versions()
    assert (versions["jax"], versions["jaxlib"]) == (jax.__version__, jaxlib.__version__)
