"""Speed of the compiled train step: ms per iteration, images/s and TFLOP/s.

Workload: configs/cifar10.py (default `case=2`: 32 px, conditional, TTUR, attention, the
original widths) with a synthetic batch sharded over all devices; one iteration is a G
step and a D step (n_dis = 1, no D-loss limit), so it runs G three times (two training
forwards, one backward), D five times (three forwards, two backwards). "img/s" counts the
global batch of real images per iteration. FLOPs are XLA's cost analysis of the compiled
per-device program (times the device count); a skipped G step (`--n_dis` > 1) is not
subtracted, as XLA's count of a conditional covers its costliest branch.

  python benchmarks/train_step_benchmark.py --batch_size=256 --steps=50          # GPU
  python benchmarks/train_step_benchmark.py --batch_size=16 --steps=3            # CPU
  python benchmarks/train_step_benchmark.py --config=lrscale=0 --dtype=bfloat16
"""
import argparse
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for `configs`
from configs import cifar10  # pylint: disable=wrong-import-position
from sagan_jax import parallel, train_step

NUM_CLASSES, CHANNELS = 10, 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="case=2", help="configs/cifar10.py argument")
    parser.add_argument("--batch_size", type=int, default=64, help="global batch")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--n_dis", type=int, default=1)
    parser.add_argument("--bn_sync", action="store_true")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = cifar10.get_config(args.config)
    config.train.batch_size = args.batch_size
    config.model.width = args.width
    config.model.dtype = args.dtype
    config.schedule.n_dis = args.n_dis
    config.train.bn_sync = args.bn_sync
    mesh = parallel.create_mesh()
    res = config.model.resolution

    state = train_step.create_train_state(config, NUM_CLASSES, CHANNELS, jax.random.key(0))
    state = jax.device_put(state, parallel.replicated_sharding(mesh))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (args.batch_size, res, res, CHANNELS)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, args.batch_size).astype(np.int32),
    }
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    key = jax.random.key(1)

    step = train_step.make_train_step(config, NUM_CLASSES, CHANNELS, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - start
    flops = float(compiled.cost_analysis()["flops"]) * mesh.devices.size

    state, metrics = compiled(state, batch, key)   # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / args.steps

    device = jax.devices()[0]
    print(f"device          {device.device_kind} x{mesh.devices.size} ({device.platform})")
    print(f"config          cifar10 {args.config}, {res} px, width {args.width}, {args.dtype}, "
          f"n_dis {args.n_dis}, bn_sync {args.bn_sync}")
    print(f"global batch    {args.batch_size}")
    print(f"compile         {compile_s:.1f} s")
    print(f"step            {seconds * 1e3:.1f} ms/iter ({args.steps} iterations)")
    print(f"throughput      {args.batch_size / seconds:.1f} img/s")
    print(f"XLA FLOPs       {flops / 1e9:.2f} GFLOP/iter -> {flops / seconds / 1e12:.3f} TFLOP/s")
    print(f"last D loss     {float(metrics['d_loss']):.4f}")


if __name__ == "__main__":
    main()
