"""Whether JAX runs on the accelerator that this machine has.

JAX falls back to the CPU, with only a warning, when its install cannot use the
machine's GPU or TPU: a CPU-only jax, or an accelerator plugin of another version than
jaxlib (pip upgrading jax over a preinstalled plugin, as on Colab). A training run would
then go on for days at CPU speed; `check` stops it with the install that fixes it.
"""
from __future__ import annotations

import fnmatch
import glob
import importlib.metadata
import os
import re
import subprocess
from typing import Callable, Mapping, Sequence

# JAX's accelerator plugins: (distribution, accelerator, jax extra that installs it).
PLUGINS = (("jax-cuda12-plugin", "gpu", "cuda12"), ("jax-cuda13-plugin", "gpu", "cuda13"),
           ("libtpu", "tpu", "tpu"))


def _nvidia_smi() -> str:
    """What `nvidia-smi -L` lists ('' without the tool, a driver, or an answer in 10 s)."""
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return listing.stdout if listing.returncode == 0 else ""


def present_accelerator(gpu_listing: Callable[[], str] = _nvidia_smi,
                        dev: str = "/dev") -> tuple[str, str] | None:
    """('gpu' or 'tpu', the evidence) for an accelerator on this machine, else None.

    A GPU is one that `nvidia-smi -L` lists; TPU chips show as `/dev/accel*` (v2-v4) or
    as `/dev/vfio/<N>` (v5e and later).

    Args:
      gpu_listing: returns the text of `nvidia-smi -L`.
      dev: the folder of device files.
    """
    gpus = [line for line in gpu_listing().splitlines() if line.startswith("GPU ")]
    if gpus:
        return "gpu", f"nvidia-smi lists {len(gpus)} GPU(s) ({gpus[0].split(' (UUID')[0]})"
    chips = sorted(glob.glob(os.path.join(dev, "accel*")) + [
        p for p in glob.glob(os.path.join(dev, "vfio", "*")) if os.path.basename(p).isdigit()])
    if chips:
        return "tpu", f"TPU chips show as {', '.join(chips)}"
    return None


def installed_versions() -> dict[str, str]:
    """Distribution -> version of jax, jaxlib and the installed accelerator plugins."""
    versions = {}
    for name in ("jax", "jaxlib", *(p for p, _, _ in PLUGINS)):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _wanted(plugin: str, versions: Mapping[str, str], jax_requires: Sequence[str]) -> str:
    """The version pattern of `plugin` that this jax installs: jaxlib's for the CUDA
    plugins, jax's own `libtpu==...` pin for libtpu."""
    for requirement in jax_requires:
        pinned = re.match(rf"{re.escape(plugin)}\s*==\s*([^;\s]+)", requirement)
        if pinned:
            return pinned.group(1)
    return versions.get("jaxlib", "")


def accelerator_fix(accelerator: str, versions: Mapping[str, str],
                    jax_requires: Sequence[str]) -> str:
    """The install that lets JAX use `accelerator` ('gpu' or 'tpu'), as one clause.

    An installed plugin of another version than this jax needs is named with the command
    that installs the matching one; without a plugin, the project's extra.

    Args:
      accelerator: 'gpu' or 'tpu'.
      versions: as `installed_versions()`.
      jax_requires: the requirements of the installed jax (`importlib.metadata.requires`).
    """
    jax_version = versions.get("jax", "")
    for plugin, kind, extra in PLUGINS:
        if kind != accelerator or plugin not in versions:
            continue
        wanted = _wanted(plugin, versions, jax_requires)
        if not fnmatch.fnmatch(versions[plugin], wanted):
            return (f"{plugin} {versions[plugin]} does not match jax {jax_version} (which "
                    f"needs {plugin}=={wanted}): pip install -U \"jax[{extra}]=={jax_version}\"")
        causes = {"gpu": "an NVIDIA driver too old for its CUDA, CUDA_VISIBLE_DEVICES",
                  "tpu": "the TPU held by another process"}[kind]
        return (f"{plugin} {versions[plugin]} matches jax {jax_version}, so see JAX's warning "
                f"above for why it did not start ({causes})")
    return f"pip install -U -e \".[{accelerator}]\" (JAX's {accelerator.upper()} build)"


def check(backend: str, allow_cpu: bool,
                  accelerator: tuple[str, str] | None = None,
                  versions: Mapping[str, str] | None = None,
                  jax_requires: Sequence[str] | None = None) -> None:
    """Stops a run that JAX would put on the CPU of a machine with a GPU or TPU.

    Args:
      backend: `jax.default_backend()`.
      allow_cpu: run on the CPU anyway.
      accelerator: as `present_accelerator()` (default: this machine's).
      versions: as `installed_versions()` (default: this environment's).
      jax_requires: jax's requirements (default: the installed jax's).

    Raises:
      ValueError: one line naming the install that fixes it.
    """
    if backend != "cpu" or allow_cpu:
        return
    accelerator = present_accelerator() if accelerator is None else accelerator
    if accelerator is None:
        return
    versions = installed_versions() if versions is None else versions
    if jax_requires is None:
        jax_requires = importlib.metadata.requires("jax") or []
    kind, evidence = accelerator
    raise ValueError(f"JAX runs on the CPU, but {evidence}: "
                     f"{accelerator_fix(kind, versions, jax_requires)}; or pass --allow_cpu "
                     "to run on the CPU.")
