"""IS + FID of N generated samples, generation included: time per stage and for 50k.

Workload: the CIFAR-10 SAGAN generator (configs/cifar10.py, 32 px, conditional, attention;
random weights, which cost the same time as trained ones) makes `--num_samples` images in
batches of `--batch_size`, sharded over all devices; each batch goes through TF1 bilinear
resizing to 299 px and the FID Inception network (float32, `Precision.HIGHEST`), and its
features come back to the host; the host then computes IS (10 splits) and FID against
reference statistics. The reference statistics are computed once per dataset and cached,
so they are not timed (synthetic ones stand in here). Inception weights: `--weights`
(converted) or random He-initialised ones, which run at the same speed.

Rows ("batch" images per iteration; "ms/iter" per batch): "generate" = G only;
"features" = resize + Inception with the transfers to and from the host (as for real
images); "generate+features" = the evaluator's pipelined loop over all N samples
(generation, Inception, features to the host), per batch. Score rows are host float64
work, "batch" = samples scored, "ms/iter" = the whole computation: "IS+FID scores" at N,
"IS+FID scores @50k" on 50,000 synthetic 2048-d features, "KID (extra)" (100 subsets of
1000; not in the totals). TFLOP/s uses XLA's FLOP count of the single-device programs.
"50k total (extrapolated)" = the loop's time per image x 50,000 + "IS+FID scores @50k".

  python benchmarks/eval_benchmark.py --num_samples=50000 --batch_size=500   # GPU
  python benchmarks/eval_benchmark.py --num_samples=192 --batch_size=64      # CPU
"""
import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for `configs`
from configs import cifar10  # pylint: disable=wrong-import-position
from sagan_jax import gan as gan_lib, parallel, sampling, train_step
from sagan_jax.evaluation import inception, reference, scores
from sagan_jax.evaluation.evaluator import Evaluator

NUM_CLASSES = 10


def random_inception_variables(seed: int = 0) -> dict:
    """He-normal kernels, identity BatchNorm: the real network's cost, no download."""
    rng = np.random.default_rng(seed)
    flat = {}
    for name, leaf in traverse_util.flatten_dict(inception.variable_shapes(), sep="/").items():
        if name.endswith("kernel"):
            std = np.sqrt(2 / np.prod(leaf.shape[:-1]))
            flat[name] = rng.normal(0, std, leaf.shape).astype(np.float32)
        else:
            one = name.endswith(("scale", "var"))
            flat[name] = np.full(leaf.shape, 1.0 if one else 0.0, np.float32)
    return traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")


def flops(fn, *args) -> float:
    """XLA's FLOP count of `fn(*args)` compiled for one device."""
    return float(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


def timed(fn, repeats: int = 1) -> float:
    """Seconds per call of `fn` (its result blocked on), after one warm-up call."""
    jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats


def is_fid_seconds(features, logits, ref, sqrt_sigma_ref) -> float:
    """Host seconds for IS (10 splits) and FID of the given features."""
    start = time.perf_counter()
    scores.inception_score(logits, 10)
    mu, sigma = scores.gaussian_stats(features)
    scores.frechet_distance(mu, sigma, ref.mu, ref.sigma, sqrt_sigma_ref)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_samples", type=int, default=50_000)
    parser.add_argument("--batch_size", type=int, default=500)
    parser.add_argument("--weights", default="", help="converted Inception weights (.npz)")
    args = parser.parse_args()

    mesh = parallel.create_mesh()
    config = cifar10.get_config()
    config.eval.batch_size = args.batch_size
    gan = gan_lib.build(config, NUM_CLASSES, 3)
    state = train_step.create_train_state(gan, config, jax.random.key(0))
    gen_fn = sampling.make_generate_fn(gan, mesh)
    generate = lambda key, labels: gen_fn(state.ema_params, state.ema_state, key, labels)
    variables = (inception.load_variables(args.weights) if args.weights
                 else random_inception_variables())
    ev = Evaluator("inception", inception.extract, variables, mesh, config.eval)
    ref = reference.ReferenceStats.from_features(
        np.random.default_rng(1).random((4096, 2048), dtype=np.float32),
        np.zeros(4096, np.int32), seed=0)
    sqrt_sigma_ref = scores.sqrt_psd(ref.sigma)  # once per evaluator (`set_reference`)

    bs, key = args.batch_size, jax.random.key(0)
    labels = jax.device_put(np.arange(bs, dtype=np.int32) % NUM_CLASSES,
                            parallel.batch_sharding(mesh))
    images = np.asarray(generate(key, labels))
    g_flops = flops(lambda z, y: gan.generator.apply({"params": state.ema_params, **state.ema_state},
                                               z, y),
                    jnp.zeros((1, config.model.z_dim)), jnp.zeros((1,), jnp.int32))
    i_flops = flops(inception.extract, variables, images[:1])
    t_gen = timed(lambda: generate(key, labels), repeats=2)
    t_inc = timed(lambda: ev.features([images]), repeats=2)

    ev.generated_features(generate, NUM_CLASSES, bs, key)  # compile the whole loop
    start = time.perf_counter()
    features, logits, _ = ev.generated_features(generate, NUM_CLASSES, args.num_samples, key)
    t_loop = time.perf_counter() - start
    t_scores = is_fid_seconds(features, logits, ref, sqrt_sigma_ref)
    start = time.perf_counter()
    scores.kernel_inception_distance(features, ref.kid_features, config.eval.kid_subsets,
                                     config.eval.kid_subset_size, config.eval.kid_seed)
    t_kid = time.perf_counter() - start
    rng = np.random.default_rng(2)
    t_scores_50k = is_fid_seconds(rng.random((50_000, 2048), dtype=np.float32),
                                  rng.normal(size=(50_000, 1008)).astype(np.float32),
                                  ref, sqrt_sigma_ref)

    n = args.num_samples
    device = f"{jax.devices()[0].device_kind} x{mesh.size}"
    rows = [("generate", bs, t_gen, g_flops), ("features", bs, t_inc, i_flops),
            ("generate+features", bs, t_loop / -(-n // bs), g_flops + i_flops),
            ("IS+FID scores", n, t_scores, 0.0),
            ("IS+FID scores @50k", 50_000, t_scores_50k, 0.0),
            ("KID (extra)", n, t_kid, 0.0)]
    print(f"{'stage':22s} {'device':18s} {'batch':>7s} {'ms/iter':>10s} {'img/s':>9s} {'TFLOP/s':>8s}")
    for name, batch, seconds, flop_per_img in rows:  # seconds per iteration
        tflops = flop_per_img * batch / seconds / 1e12 if flop_per_img else float("nan")
        print(f"{name:22s} {device:18s} {batch:7d} {seconds * 1e3:10.1f} "
              f"{batch / seconds:9.1f} {tflops:8.3f}")
    print(f"measured: {n} samples, IS+FID incl. generation: {t_loop + t_scores:.1f} s")
    print(f"50k total (extrapolated): {t_loop / n * 50_000 + t_scores_50k:.1f} s")


if __name__ == "__main__":
    main()
