"""Precision, recall, density and coverage at 50k samples: wall time and peak memory.

Workload: `--num_fake` generated and `--num_real` real features of `--dim` dimensions
(standard normal float32: the cost does not depend on the values), k = 3, `--block` rows
of both sets stacked against all of them at a time (sagan_jax/evaluation/manifold.py):
one pass of (N_real + N_fake)^2 x D multiply-adds gives the k-NN radii and the four
scores together.

Rows ("batch" = generated samples scored, against `--num_real` real ones; "ms/iter" = the
whole computation): "compile" = tracing and compiling the k-NN program for these shapes;
"PRDC" = one call of `manifold.manifold_metrics` (host centring and transfers included,
compiled already); "intra-FID" = `conditional.intra_fid` over `--classes` equal classes
(host float64, for comparison; 0 skips it). TFLOP/s counts the matrix products
(2 (N_real + N_fake)^2 D FLOPs). Memory: "host MiB" = how far the process's peak
RSS rose during the row (the inputs, already there, not counted); "device MiB" = the
accelerator's peak bytes in use as JAX reports them (inputs included; '-' on CPU).

  nice python benchmarks/metrics_benchmark.py                   # 50k x 50k, 2048-d
  python benchmarks/metrics_benchmark.py --num_real=5000 --num_fake=5000
"""
import argparse
import pathlib
import resource
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from anywhere
from sagan_jax.evaluation import conditional, manifold  # pylint: disable=wrong-import-position


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_peak_mib() -> float:
    """Peak accelerator memory in use as JAX reports it (NaN where it reports none)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", float("nan")) / 2**20


def measured(fn) -> tuple[float, float]:
    """(seconds, rise of the peak RSS in MiB) of one call of `fn`."""
    before = peak_rss_mib()
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start, peak_rss_mib() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_real", type=int, default=50_000)
    parser.add_argument("--num_fake", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=manifold.NEAREST_K)
    parser.add_argument("--block", type=int, default=manifold.BLOCK)
    parser.add_argument("--classes", type=int, default=10, help="intra-FID classes; 0 skips")
    args = parser.parse_args()
    manifold.BLOCK = args.block

    rng = np.random.default_rng(0)
    real = rng.standard_normal((args.num_real, args.dim), dtype=np.float32)
    fake = rng.standard_normal((args.num_fake, args.dim), dtype=np.float32)
    points = jax.ShapeDtypeStruct((args.num_real + args.num_fake, args.dim), np.float32)
    # The program `manifold_metrics` runs, compiled alone; its call then reuses it.
    counts = manifold._counts  # pylint: disable=protected-access
    t_compile, m_compile = measured(lambda: counts.lower(
        points, num_real=args.num_real, k=args.k, block=args.block).compile())
    result = {}
    t_prdc, m_prdc = measured(
        lambda: result.setdefault("m", manifold.manifold_metrics(real, fake, args.k)).k)
    d_prdc = device_peak_mib()
    rows = [("compile", t_compile, m_compile, float("nan"), 0.0),
            (f"PRDC k={args.k}", t_prdc, m_prdc, d_prdc,
             2.0 * (args.num_real + args.num_fake) ** 2 * args.dim)]
    if args.classes:
        fake_labels = np.arange(args.num_fake) % args.classes
        real_labels = np.arange(args.num_real) % args.classes
        t_intra, m_intra = measured(lambda: conditional.intra_fid(
            fake, fake_labels, real, real_labels, args.classes).mean)
        rows.append((f"intra-FID {args.classes} cl", t_intra, m_intra, float("nan"), 0.0))

    n, device = args.num_fake, f"{jax.devices()[0].device_kind} x1"
    print(f"{'stage':16s} {'device':18s} {'batch':>7s} {'ms/iter':>10s} {'img/s':>9s} "
          f"{'TFLOP/s':>8s} {'host MiB':>9s} {'device MiB':>10s}")
    for name, seconds, host_mib, device_mib, flop in rows:
        tflops = flop / seconds / 1e12 if flop else float("nan")
        rate = "-" if name == "compile" else f"{n / seconds:.1f}"
        device_col = "-" if np.isnan(device_mib) else f"{device_mib:.0f}"
        print(f"{name:16s} {device:18s} {n:7d} {seconds * 1e3:10.1f} {rate:>9s} "
              f"{tflops:8.3f} {host_mib:9.0f} {device_col:>10s}")
    m = result["m"]
    print(f"features: {args.num_real} real, {args.num_fake} generated, {args.dim}-d, "
          f"block {args.block}; scores: precision {m.precision:.4f}, recall {m.recall:.4f}, "
          f"density {m.density:.4f}, coverage {m.coverage:.4f}")


if __name__ == "__main__":
    main()
