"""launch/colab.ipynb runs headless from top to bottom with a tiny configuration.

The notebook reads its sizes from SAGAN_NOTEBOOK_* variables, which the kernel inherits
from this process; it trains `configs/digits.py:test` for 3 steps, shows the newest grid
and the interpolations, and prints the scores of every checkpoint.
"""
import base64
import csv
from pathlib import Path

import nbclient
import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "launch" / "colab.ipynb"


def images(cell):
    """The PNG images that a cell displayed, as bytes."""
    return [base64.b64decode(out["data"]["image/png"]) for out in cell.get("outputs", [])
            if "image/png" in out.get("data", {})]


def text(cell):
    return "".join(out.get("text", "") for out in cell.get("outputs", [])
                   if out.get("output_type") == "stream")


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)


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
