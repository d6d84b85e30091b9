"""Speed of the compiled train step: ms per iteration, images/s and TFLOP/s.

Workload: configs/cifar10.py (default `case=2`: 32 px, conditional, TTUR, attention, the
original widths) or, with `--workload=digits`, the quick start's configs/digits.py (16 px,
one channel, width 0.25, batch 64), with a synthetic batch sharded over all devices; one
iteration is a G step and a D step (n_dis = 1, no D-loss limit), so it runs G three times
(two training forwards, one backward), D five times (three forwards, two backwards). "img/s" counts the
global batch of real images per iteration. FLOPs and bytes are XLA's cost analysis of
the compiled one-iteration program (times the device count); a skipped G step
(`--n_dis` > 1) is not subtracted, as XLA's count of a conditional covers its costliest
branch. "fusions" counts the fusion instructions of the optimized HLO.

`--cpu_convolutions` overrides the config's `train.cpu_convolutions` (XLA:CPU's
convolutions through YNNPACK, 'default', or Eigen, 'eigen').
`--steps_per_call=K` runs K iterations per call in the step's device-side loop
(`train_step.make_train_step(..., steps_per_call=K)`); times are still per iteration.
Each of `--rounds` rounds runs `--steps` iterations without waiting in between; the
medians over rounds are printed, wall time and the process's CPU time (all threads),
which varies far less than wall time on a shared machine.

  python benchmarks/train_step_benchmark.py --batch_size=256 --steps=50          # GPU
  python benchmarks/train_step_benchmark.py --batch_size=16 --steps=3            # CPU
  python benchmarks/train_step_benchmark.py --width=0.125 --steps_per_call=8 --steps=32
  python benchmarks/train_step_benchmark.py --config=lrscale=0 --dtype=bfloat16
  python benchmarks/train_step_benchmark.py --workload=digits --cpu_convolutions=default
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import statistics
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for `configs`
from configs import cifar10, digits  # pylint: disable=wrong-import-position
from sagan_jax import gan as gan_lib, parallel, train_step  # pylint: disable=wrong-import-position

NUM_CLASSES = 10
WORKLOADS = {"cifar10": cifar10, "digits": digits}


@dataclasses.dataclass
class CompiledStep:
    """A compiled train step, the arguments of its next call and what XLA says of it.

    Attributes:
      fn: the compiled step; it donates the state, so `args` is refreshed by `run`.
      args: (state, batches, key, count), the batches stacked (steps_per_call, B, ...).
      steps_per_call: iterations per call.
      global_batch: real images per iteration.
      compile_s: seconds to lower and compile.
      flops, bytes_accessed: XLA's cost analysis of one iteration, all devices.
      fusions: fusion instructions in the optimized HLO of one device.
    """

    fn: Callable
    args: list
    steps_per_call: int
    global_batch: int
    compile_s: float
    flops: float
    bytes_accessed: float
    fusions: int

    def run(self, iterations: int) -> tuple[float, float, dict]:
        """Runs `iterations` (a multiple of `steps_per_call`); wall and CPU s per iteration."""
        calls = max(1, iterations // self.steps_per_call)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            self.args[0], metrics = self.fn(*self.args)
        jax.block_until_ready((self.args[0], metrics))
        n = calls * self.steps_per_call
        return (time.perf_counter() - wall) / n, (time.process_time() - cpu) / n, metrics


def xla_cost(compiled: Any) -> tuple[float, float, int]:
    """(FLOPs, bytes accessed, fusion count) of one device's compiled program."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a list in older JAX versions
    fusions = len(re.findall(r"^\s*\S+ = \S+ fusion\(", compiled.as_text(), re.M))
    return float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)), fusions


def compile_step(config: Any, num_classes: int, mesh: Any, steps_per_call: int = 1,
                 compiler_options: dict | None = None) -> CompiledStep:
    """Builds the GAN of `config`, its state and a synthetic batch, and compiles the step.

    With K > 1 the FLOPs and bytes are XLA's count of the K-iteration program, whose
    loop body it counts once (its trip count is a run-time value): one iteration's cost,
    within 0.3% of the one-iteration program's (cifar10 case 2, width 1/8, on CPU).
    """
    gan = gan_lib.build(config, num_classes, config.data.channels)
    state = train_step.create_train_state(gan, config, jax.random.key(0))
    state = jax.device_put(state, parallel.replicated_sharding(mesh))
    b, k = config.train.batch_size, steps_per_call
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (k, b, *gan.image_shape)).astype(np.float32),
             "label": rng.integers(0, max(num_classes, 1), (k, b)).astype(np.int32)}
    args = [state, jax.device_put(batch, parallel.stacked_batch_sharding(mesh)),
            jax.random.key(1), np.int32(k)]
    step = train_step.make_train_step(gan, config, mesh, steps_per_epoch=50_000 // b,
                                      steps_per_call=k)
    start = time.perf_counter()
    compiled = step.lower(*args).compile(compiler_options)
    compile_s = time.perf_counter() - start
    flops, bytes_accessed, fusions = xla_cost(compiled)
    devices = mesh.devices.size
    return CompiledStep(compiled, args, k, b, compile_s, flops * devices, bytes_accessed * devices,
                        fusions)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="cifar10", choices=sorted(WORKLOADS))
    parser.add_argument("--config", default=None,
                        help="the workload's config argument (cifar10: default 'case=2')")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="global batch (default: cifar10 64, digits its config's)")
    parser.add_argument("--width", type=float, default=None,
                        help="channel multiplier (default: cifar10 1.0, digits its config's)")
    parser.add_argument("--cpu_convolutions", default=None,
                        help="train.cpu_convolutions (default: the config's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--n_dis", type=int, default=1)
    parser.add_argument("--bn_sync", action="store_true")
    parser.add_argument("--steps", type=int, default=10, help="timed iterations per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (medians printed)")
    parser.add_argument("--steps_per_call", type=int, default=1, help="iterations per call")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cifar = args.workload == "cifar10"
    config = WORKLOADS[args.workload].get_config(args.config or ("case=2" if cifar else None))
    config.train.batch_size = args.batch_size or (64 if cifar else config.train.batch_size)
    config.model.width = args.width or (1.0 if cifar else config.model.width)
    config.train.cpu_convolutions = args.cpu_convolutions or config.train.cpu_convolutions
    config.model.dtype = args.dtype
    config.update_rule.n_dis = args.n_dis
    config.train.bn_sync = args.bn_sync
    mesh = parallel.create_mesh()
    step = compile_step(config, NUM_CLASSES, mesh, args.steps_per_call)
    step.run(args.steps_per_call)  # warm-up
    rounds = [step.run(args.steps) for _ in range(args.rounds)]
    wall = statistics.median(r[0] for r in rounds)
    cpu = statistics.median(r[1] for r in rounds)
    metrics = rounds[-1][2]
    last = {k: np.asarray(v)[-1] for k, v in metrics.items()}

    device = jax.devices()[0]
    print(f"device          {device.device_kind} x{mesh.devices.size} ({device.platform}), "
          f"jax {jax.__version__}")
    print(f"config          {args.workload} {args.config or ''}, {config.model.resolution} px, "
          f"width {config.model.width}, {args.dtype}, n_dis {args.n_dis}, bn_sync "
          f"{args.bn_sync}, cpu_convolutions {config.train.cpu_convolutions}")
    print(f"global batch    {config.train.batch_size}, {args.steps_per_call} iteration(s) per call")
    print(f"compile         {step.compile_s:.1f} s")
    print(f"step            {wall * 1e3:.1f} ms/iter wall, {cpu * 1e3:.1f} ms/iter CPU "
          f"(median of {args.rounds} rounds of {args.steps} iterations; rounds' wall "
          f"{', '.join(f'{r[0] * 1e3:.0f}' for r in rounds)})")
    print(f"throughput      {config.train.batch_size / wall:.1f} img/s")
    print(f"XLA FLOPs       {step.flops / 1e9:.2f} GFLOP/iter -> {step.flops / wall / 1e12:.3f} TFLOP/s")
    print(f"XLA bytes       {step.bytes_accessed / 1e9:.2f} GB/iter accessed, {step.fusions} fusions")
    print(f"last D loss     {float(last['d_loss']):.6f}")


if __name__ == "__main__":
    main()
