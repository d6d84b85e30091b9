"""benchmarks/device_benchmark.py --tiny: it runs on CPU and prints its one table.

CI-size, not timed: one case and dtype at tiny sizes (the other case and dtype run the
same code with another config), in a subprocess with this session's XLA flags (four
CPU devices, cheap compiles). The rows' own arithmetic is checked (img/s against
ms/iter and batch, TFLOP/s against the FLOP count), and that nothing the script ran
imported TensorFlow or clu, which the GPU machine lacks.
"""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLUMNS = ["device", "case", "dtype", "batch", "ms/iter", "img/s", "TFLOP/s", "compile s",
           "total s", "note"]
ROUNDING = 0.051  # img/s is printed with one decimal
# Runs the script as `python benchmarks/device_benchmark.py ...` would, then reports
# which of the modules the GPU machine lacks were imported along the way.
RUN = """
import runpy, sys
sys.argv = ["benchmarks/device_benchmark.py"] + sys.argv[1:]
sys.path.insert(0, "benchmarks")
runpy.run_path("benchmarks/device_benchmark.py", run_name="__main__")
print("imported:", sorted(m for m in ("tensorflow", "clu") if m in sys.modules))
"""


@pytest.fixture(scope="module")
def tiny_run():
    out = subprocess.run([sys.executable, "-c", RUN, "--tiny", "--cases=32px", "--dtypes=float32"],
                         cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                         timeout=1800, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _table(stdout):
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("| ")]
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


@pytest.mark.slow
def test_tiny_run_prints_one_table_with_the_issues_columns(tiny_run):
    header, rows = _table(tiny_run)
    assert header == COLUMNS
    assert [(r["case"], r["dtype"]) for r in rows] == [
        ("32px step", "float32"), ("IS+FID (32px G)", "highest"), ("IS+FID (32px G)", "default")]
    assert all(r["device"] == "cpu x4" for r in rows)
    assert "imported: []" in tiny_run


@pytest.mark.slow
def test_step_row_arithmetic(tiny_run):
    step = _table(tiny_run)[1][0]
    batch, ms, img_s = int(step["batch"]), float(step["ms/iter"]), float(step["img/s"])
    assert batch == 8 and ms > 0
    assert img_s == pytest.approx(batch / ms * 1e3, rel=0.01, abs=ROUNDING)
    gflop = float(step["note"].split(" GFLOP/iter")[0])
    assert gflop > 0.1  # the whole G + D iteration, not an empty program
    assert float(step["TFLOP/s"]) == pytest.approx(gflop / ms, rel=0.05, abs=2e-3)
    assert float(step["compile s"]) > 0


@pytest.mark.slow
def test_score_rows_time_the_same_images_at_both_precisions(tiny_run):
    highest, default = _table(tiny_run)[1][1:]
    for row in (highest, default):
        ms, img_s = float(row["ms/iter"]), float(row["img/s"])
        assert int(row["batch"]) == 8 and ms > 0
        assert img_s == pytest.approx(8 / ms * 1e3, rel=0.01, abs=ROUNDING)  # 2 batches of 8
        assert float(row["total s"]) >= 16 / img_s * 0.99  # the loop plus IS and FID
        assert row["note"].startswith("16 samples: IS ")
    assert "vs highest: IS " in default["note"]
