"""launch/colab.ipynb runs headless from top to bottom with a tiny configuration.

The notebook reads its sizes from SAGAN_NOTEBOOK_* variables, which the kernel inherits
from this process; it trains `configs/digits.py:test` for 3 steps, shows the newest grid
and the interpolations, and prints the scores of every checkpoint. Where sagan_jax is
installed, the notebook uses that checkout; where it is not (.ci/run's "preinstalled"
job, with SAGAN_REPO set to the checkout), the notebook's own cell installs it.
"""
import ast
import base64
import csv
import fnmatch
import shlex
import subprocess
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "launch" / "colab.ipynb"


def images(cell):
    """The PNG images that a cell displayed, as bytes."""
    return [base64.b64decode(out["data"]["image/png"]) for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]


def text(cell):
    return "".join(out.get("text", "") for out in cell.get("outputs", [])
                   if out.get("output_type") == "stream")


def install_cell(nb):
    [cell] = [c for c in nb.cells if c.cell_type == "code" and "def accelerator" in c.source]
    return cell


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_notebook_runs_and_shows_the_grid(tmp_path, monkeypatch):
    workdir = tmp_path / "digits"
    monkeypatch.setenv("SAGAN_NOTEBOOK_CONFIG", "configs/digits.py:test")
    monkeypatch.setenv("SAGAN_NOTEBOOK_STEPS", "3")
    monkeypatch.setenv("SAGAN_NOTEBOOK_SAMPLES", "64")
    monkeypatch.setenv("SAGAN_NOTEBOOK_WORKDIR", str(workdir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    # The checkout used is this one; where the cell installed it, it did so with -U and
    # the extra of the accelerator it found first.
    lines = text(install_cell(nb)).splitlines()
    [runtime] = [line.split()[-1] for line in lines if line.startswith("runtime: ")]
    assert lines[-1] == f"sagan_jax from {REPO}"
    installs = [shlex.split(line[2:]) for line in lines if " pip install " in line]
    extra = "" if runtime == "cpu" else f"[{runtime}]"
    assert installs in ([], [[sys.executable, "-m", "pip", "install", "-q", "-U", "-e",
                              f"{REPO}{extra}"]])

    shown = [image for cell in nb.cells for image in images(cell)]
    newest = sorted((workdir / "samples").glob("step_*.png"))[-1]
    assert newest.name == "step_0000003.png"
    assert shown == [newest.read_bytes(), (workdir / "interpolations.png").read_bytes()]

    # The table printed by the scores cell: the CSV's rows, both generators, final step.
    with open(workdir / "eval" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    [table] = [text(c) for c in nb.cells if "scores.csv" in c.source and c.cell_type == "code"]
    lines = table.splitlines()
    header = lines.index(next(line for line in lines if line.split()[:2] == ["step", "generator"]))
    printed = [line.split() for line in lines[header + 1:]]
    assert len(printed) == len(rows) and {"ema", "raw"} <= {r["generator"] for r in rows}
    for row, cells in zip(rows, printed):
        assert cells[:2] == [row["step"], row["generator"]]
        fid = lines[header].split().index("FID")
        assert float(cells[fid]) == float(f"{float(row['FID']):.4g}")
    assert printed[-1][0] == "3"


class FakeGlob:
    """Stands in for the glob module, over a given list of device files."""

    def __init__(self, devices):
        self.devices = devices

    def glob(self, pattern):
        return fnmatch.filter(self.devices, pattern)


def fake_nvidia_smi(directory, output, status):
    path = directory / "nvidia-smi"
    path.write_text(f"#!/bin/sh\necho {shlex.quote(output)}\nexit {status}\n")
    path.chmod(0o755)


def test_accelerator_is_found_from_nvidia_smi_and_tpu_device_files(tmp_path, monkeypatch):
    """The install cell's accelerator(), run with faked listings: nvidia-smi's GPU lines,
    TPU chips as /dev/accel* (v2 to v4) or /dev/vfio/N (v5e and later)."""
    source = install_cell(nbformat.read(NOTEBOOK, as_version=4)).source
    functions = [node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]
    namespace = {"subprocess": subprocess}
    exec(compile(ast.Module(functions, type_ignores=[]), "install cell", "exec"), namespace)
    monkeypatch.setenv("PATH", str(tmp_path))

    def found(*devices):
        namespace["glob"] = FakeGlob(list(devices))
        return namespace["accelerator"]()

    assert found() == "cpu"  # No nvidia-smi at all.
    assert found("/dev/accel0", "/dev/accel1") == "tpu"
    assert found("/dev/vfio/vfio", "/dev/vfio/0") == "tpu"
    assert found("/dev/vfio/vfio") == "cpu"  # VFIO's control file alone is no TPU.
    fake_nvidia_smi(tmp_path, "No devices were found", 6)  # A driver without a GPU.
    assert found() == "cpu"
    assert found("/dev/vfio/vfio", "/dev/vfio/0") == "tpu"
    fake_nvidia_smi(tmp_path, "GPU 0: Tesla T4 (UUID: GPU-4b2d4c5e-0f7a-8e1b-3c9d)", 0)
    assert found() == "gpu"
