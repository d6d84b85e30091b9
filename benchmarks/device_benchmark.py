"""One table of what speed matters on an accelerator: the train step and the scoring.

Rows, printed one at a time as they finish (so a run stopped at its time limit still
shows the rows done):
- the train step of the two cases of issue 11, in float32 and bfloat16 compute
  (parameters, optimizer state and SN stay float32): "32px" = configs/cifar10.py case 2
  (conditional, TTUR, attention), batch 256; "96px" = configs/animeface.py (176
  classes, attention at 24x24), batch 128. One iteration = a G step + a D step on
  synthetic data (benchmarks/train_step_benchmark.py says what it runs). ms/iter is the
  wall time of back-to-back calls after a warm-up, over at least `--min_time_s`;
  TFLOP/s = XLA's cost analysis of the compiled step / that time; "compile s" = lowering
  and compiling the step.
- after the first case's rows, IS + FID of `--samples` generated images with Inception
  at precision 'highest' (float32 convolutions, the papers' numbers) and 'default'
  (TF32 / bf16 passes where the device has them): the 32 px G (random weights)
  generates, the evaluator's pipelined loop runs Inception and fetches features, the
  host computes IS (10 splits) and FID against reference statistics (synthetic here;
  computed once per dataset and cached in real runs).
  ms/iter is per eval batch of the loop; "total s" = the loop + IS + FID on the host,
  generation included; "compile s" = the first batch, compilation included; TFLOP/s
  counts G and Inception (XLA's count before optimisation). Both precisions score the
  same images (same key, same G); the 'default' row gives its scores' difference from
  the 'highest' row. Random Inception weights run at the real network's speed; their
  score difference is only indicative: pass `--weights` (converted, see
  sagan_jax/evaluation/inception.py) for the real network's.

  bash benchmarks/device_benchmark.sh                   # GPU machine (installs carried wheels)
  python benchmarks/device_benchmark.py --tiny          # CPU, tiny sizes (CI)
  python benchmarks/device_benchmark.py --cases=32px --dtypes=bfloat16 --samples=0

Imports neither TensorFlow nor clu; configs/ needs ml_collections (device_benchmark.sh
installs it from a carried wheel).
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for `configs`
# pylint: disable=wrong-import-position
from configs import animeface, cifar10
from eval_benchmark import random_inception_variables
from sagan_jax import gan as gan_lib, parallel, sampling, train_step
from sagan_jax.evaluation import inception, scores
from sagan_jax.evaluation.evaluator import Evaluator
from train_step_benchmark import compile_step

# name -> (config module, config argument, classes, batch)
CASES = {"32px": (cifar10, "case=2", 10, 256), "96px": (animeface, "", 176, 128)}
PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}
COLUMNS = ("device", "case", "dtype", "batch", "ms/iter", "img/s", "TFLOP/s", "compile s",
           "total s", "note")
WIDTHS = (24, 15, 8, 5, 8, 8, 7, 9, 7, 0)
# --tiny: narrow nets, small batches (divisible by the 4 CPU devices of the test session)
TINY = dict(width=1 / 16, batch=8, samples=16, eval_batch=8, splits=2, min_time_s=0.0)
# Cheaper XLA compilation for --tiny (same programs, same values; as tests/conftest.py).
TINY_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def print_row(*cells) -> None:
    text = [f"{c:.{p}f}" if isinstance(c, float) else str(c)
            for c, p in zip(cells, (0, 0, 0, 0, 1, 1, 3, 1, 1, 0))]
    print("| " + " | ".join(t.ljust(w) for t, w in zip(text, WIDTHS)) + " |", flush=True)


def step_row(device: str, name: str, dtype: str, mesh, args) -> None:
    """Compiles and times the train step of case `name` in `dtype`; prints its row."""
    module, arg, num_classes, batch = CASES[name]
    config = module.get_config(arg)
    config.model.dtype = dtype
    config.train.batch_size = args.batch or batch
    config.model.width = args.width
    step = compile_step(config, num_classes, mesh, args.steps_per_call,
                        TINY_COMPILE if args.tiny else None)
    k = args.steps_per_call
    step.run(k)  # warm-up
    calls = 1
    if args.min_time_s:
        probe, _, _ = step.run(5 * k)
        calls = max(5, round(args.min_time_s / (probe * k)))
    seconds, _, metrics = step.run(calls * k)
    loss = float(np.asarray(metrics["d_loss"])[-1])
    b = config.train.batch_size
    print_row(device, f"{name} step", dtype, b, seconds * 1e3, b / seconds,
              step.flops / seconds / 1e12, step.compile_s, "-",
              f"{step.flops / 1e9:.1f} GFLOP/iter, {calls * k} iters, {k} per call, "
              f"D loss {loss:.3f}")


def pre_optimisation_flops(fn, *example) -> float:
    """XLA's FLOP count of `fn(*example)` before optimisation (no compile needed); NaN
    where this JAX version's lowered stage has no cost analysis (a column, not worth a
    failed run)."""
    lowered = jax.jit(fn).lower(*example)
    cost = lowered.cost_analysis() if hasattr(lowered, "cost_analysis") else None
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", float("nan")))


def score_rows(device: str, mesh, args) -> None:
    """Times IS + FID of `args.samples` images at both precisions; prints two rows."""
    config = cifar10.get_config("case=2")
    config.model.width = args.width
    config.eval.batch_size = args.eval_batch
    gan = gan_lib.build(config, 10, 3)
    state = train_step.create_train_state(gan, config, jax.random.key(0))
    gen_fn = sampling.make_generate_fn(gan, mesh)
    generate = lambda key, labels: gen_fn(state.ema_params, state.ema_state, key, labels)  # noqa: E731
    variables = (inception.load_variables(args.weights) if args.weights
                 else random_inception_variables())
    g_vars = {"params": state.ema_params, **state.ema_state}
    flops_per_image = (
        pre_optimisation_flops(gan.generator.apply, g_vars, jnp.zeros((1, gan.z_dim)),
                               jnp.zeros((1,), jnp.int32))
        + pre_optimisation_flops(inception.extract, variables, jnp.zeros((1, 32, 32, 3))))
    rng = np.random.default_rng(1)
    mu_ref, sigma_ref = scores.gaussian_stats(rng.random((4096, 2048), dtype=np.float32))
    sqrt_sigma_ref = scores.sqrt_psd(sigma_ref)  # once per evaluator in real runs
    key, results = jax.random.key(0), {}
    for precision in ("highest", "default"):
        extract = functools.partial(inception.extract, precision=PRECISIONS[precision])
        ev = Evaluator("inception", extract, variables, mesh, config.eval)
        start = time.perf_counter()
        ev.generated_features(generate, 10, args.eval_batch, key)  # compiles G and Inception
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        features, logits, _ = ev.generated_features(generate, 10, args.samples, key)
        loop_s = time.perf_counter() - start
        is_mean, _ = scores.inception_score(logits, args.splits)
        mu, sigma = scores.gaussian_stats(features)
        fid = scores.frechet_distance(mu, sigma, mu_ref, sigma_ref, sqrt_sigma_ref)
        total_s = time.perf_counter() - start
        results[precision] = is_mean, fid
        note = f"{args.samples} samples: IS {is_mean:.4f}, FID {fid:.3f}"
        if precision != "highest":
            d_is, d_fid = (a - b for a, b in zip(results[precision], results["highest"]))
            note += f"; vs highest: IS {d_is:+.2e}, FID {d_fid:+.2e}"
        batches = -(-args.samples // args.eval_batch)
        print_row(device, "IS+FID (32px G)", precision, args.eval_batch, loop_s / batches * 1e3,
                  args.samples / loop_s, flops_per_image * args.samples / loop_s / 1e12, first_s,
                  total_s, note)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-size run (CI)")
    parser.add_argument("--cases", default="32px,96px", help="comma-separated, of " + ",".join(CASES))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=0, help="0: each case's batch")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    parser.add_argument("--steps_per_call", type=int, default=1, help="iterations per call")
    parser.add_argument("--min_time_s", type=float, default=2.0, help="timed seconds per step row")
    parser.add_argument("--samples", type=int, default=50_000, help="0 skips the scoring rows")
    parser.add_argument("--eval_batch", type=int, default=500)
    parser.add_argument("--splits", type=int, default=10, help="IS splits")
    parser.add_argument("--weights", default="", help="converted Inception weights (.npz)")
    args = parser.parse_args()
    if args.tiny:
        args.width, args.batch, args.samples = TINY["width"], TINY["batch"], TINY["samples"]
        args.eval_batch, args.splits, args.min_time_s = (TINY["eval_batch"], TINY["splits"],
                                                         TINY["min_time_s"])
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; choose from {sorted(CASES)}.")
    return args


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    mesh = parallel.create_mesh()
    d = jax.devices()[0]
    device = f"{d.device_kind} x{mesh.devices.size}"
    print(f"jax {jax.__version__}, {d.platform}; width {args.width}; "
          f"{'tiny sizes' if args.tiny else 'full sizes'}", flush=True)
    print_row(*COLUMNS)
    print("|" + "|".join("-" * (w + 2) for w in WIDTHS) + "|", flush=True)
    cases = args.cases.split(",")
    for name in cases:
        for dtype in args.dtypes.split(","):
            step_row(device, name, dtype, mesh, args)
        if name == cases[0] and args.samples:
            score_rows(device, mesh, args)  # before the next case's (96 px: slower) compiles
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
