"""The shared config vocabulary, the `arg` parser and the `test` variant.

Every experiment file (`configs/<dataset>.py`) starts from `get_base_config()` and sets
what its experiment changes. Configs are run from the repository root:
`python -m sagan_jax.main --config=configs/cifar10.py:case=5 --workdir=DIR`.
"""
from __future__ import annotations

import ml_collections

# Learning rates of the original (../shared/SEED.md, "Training"): TTUR, or 2e-4 for both.
TTUR_LRS = (1e-4, 4e-4)
NO_TTUR_LRS = (2e-4, 2e-4)
# The "D loss limit" rule of the original: mean of the last 5 D losses >= 0.5 -> 4 D-only steps.
D_LOSS_LIMIT = 0.5
OFF = float("inf")


def steps_for(epochs: int, num_examples: int, batch_size: int) -> int:
    """Training length in steps: `epochs` passes over `num_examples`, last batch dropped.

    The original counted epochs and dropped incomplete last batches (SEED.md), so one
    epoch is `num_examples // batch_size` steps.
    """
    return epochs * (num_examples // batch_size)


def train_for_epochs(c: ml_collections.ConfigDict, epochs: int, num_examples: int) -> None:
    """Sets the run length and the original's output rhythm, at `c.train.batch_size`.

    The original wrote a sample grid every epoch and a checkpoint every 5 epochs, and
    scored every checkpoint with 10k samples and 1 split (SEED.md).
    """
    epoch = num_examples // c.train.batch_size
    c.train.num_steps = steps_for(epochs, num_examples, c.train.batch_size)
    c.log.sample_every_steps = epoch
    c.checkpoint.every_steps = c.eval.every_steps = 5 * epoch
    c.eval.num_samples, c.eval.splits = 10_000, 1


def get_96px_config(arg: str | None, name: str, epochs: int,
                    num_examples: int) -> ml_collections.ConfigDict:
    """The original's 96 px SAGAN runs (AnimeFace, Flowers), or `sngan` for comparison.

    SAGAN: attention at 24x24 (after G's third block, after D's first non-optimized
    block), batch 128, G 5e-5 / D 2e-4, D:G 1:1. `sngan`: no attention, D:G 5:1.

    Args:
      arg: optional 'sngan' and/or 'test'.
      name: the dataset's `data.name`.
      epochs: training length of the original.
      num_examples: images in the dataset.
    """
    args = parse_arg(arg, {"sngan": bool, "test": bool})
    c = get_base_config()
    c.data.name = name
    c.data.image_size = c.model.resolution = 96
    c.model.g_attention = c.model.d_attention = () if args.get("sngan") else (24,)
    c.schedule.n_dis = 5 if args.get("sngan") else 1
    c.optim.g_lr, c.optim.d_lr = 5e-5, 2e-4
    c.train.batch_size = 128
    train_for_epochs(c, epochs, num_examples)
    c.log.grid_classes = 16
    if args.get("test"):
        make_test_variant(c)
    return c


def get_base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment (the original's choices where it had one)."""
    c = ml_collections.ConfigDict()

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    c.data.image_size = 32
    c.data.channels = 3
    c.data.path = ""  # Folder datasets: root with one sub-folder per class.
    c.data.data_dir = ""  # TFDS data_dir; '' = TFDS default.
    c.data.manual_dir = ""
    c.data.variant = ""  # STL-10 only: 'labelled' | 'unlabelled'.
    c.data.resize = "bilinear"
    c.data.prefetch = 2  # Batches prepared ahead of the step.

    c.model = ml_collections.ConfigDict()
    c.model.resolution = 32  # Selects the architecture table (SEED.md, "Networks").
    c.model.width = 1.0  # Channel multiplier; 1.0 = the original's channel counts.
    c.model.z_dim = 128
    c.model.conditional = True
    c.model.g_attention = ()  # Resolutions after which G has a self-attention block.
    c.model.d_attention = ()
    c.model.g_sn = True  # The original spectrally normalises G as well as D.
    c.model.dtype = "float32"  # 'bfloat16' computes in bf16, parameters stay fp32.
    c.model.sn_iters = 1
    c.model.sn_eps = 1e-12

    c.optim = ml_collections.ConfigDict()
    c.optim.g_lr, c.optim.d_lr = TTUR_LRS
    c.optim.b1 = 0.0
    c.optim.b2 = 0.9
    c.optim.lr_scaling = "none"  # 'linear': rates x batch_size / base_batch.
    c.optim.base_batch = 256

    c.schedule = ml_collections.ConfigDict()
    c.schedule.n_dis = 1  # D steps per G step (SAGAN 1, SNGAN 5).
    c.schedule.d_loss_limit = OFF  # inf switches the D-loss-limit rule off.
    c.schedule.window = 5
    c.schedule.d_only_steps = 4

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256  # Global batch, split over all devices.
    c.train.num_steps = steps_for(100, 50_000, 256)
    c.train.seed = 0
    c.train.loss = "hinge"
    c.train.ema_decay = 0.999
    c.train.ema_start = 0
    c.train.sample_with_ema = True
    c.train.bn_sync = False  # False: per-replica BN statistics, as the original on one GPU.

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep = 3

    c.log = ml_collections.ConfigDict()
    c.train.ema_start = 0  # So that the EMA of G differs from G within the few steps.
    c.log.every_steps = 100
    c.log.sample_every_steps = 1000
    c.log.grid_rows = 8  # Samples per class (rows); one column per class.
    c.log.grid_classes = 10  # At most this many classes (columns) in a grid.

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 0  # 0 = no evaluation during training.
    c.eval.num_samples = 10_000
    c.eval.batch_size = 500
    c.eval.splits = 10
    c.eval.feature_net = "inception"
    c.eval.inception_weights = ""
    c.eval.stats_dir = ""
    return c


def parse_arg(arg: str | None, allowed: dict[str, type]) -> dict:
    """Parses 'case=5,test' into {'case': 5, 'test': True}.

    Args:
      arg: the text after ':' in `--config=configs/x.py:arg`, or None.
      allowed: key -> type (`bool` keys are flags written without a value).

    Returns:
      The given keys with their typed values.

    Raises:
      ValueError: a key that `allowed` does not list, or a malformed value.
    """
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in allowed:
            raise ValueError(
                f"unknown config argument {key!r}; use a comma-separated list of {sorted(allowed)}."
            )
        out[key] = True if allowed[key] is bool and not value else allowed[key](value)
    return out


def choose(arg_value: int | None, default: int, table: dict) -> int:
    """Validates a table row number such as `case=`."""
    value = default if arg_value is None else arg_value
    if value not in table:
        raise ValueError(f"no row {value} in this table; choose one of {sorted(table)}.")
    return value


def make_test_variant(c: ml_collections.ConfigDict, width: float = 1 / 16) -> None:
    """Shrinks `c` in place to a tiny, offline run: narrow nets, batch 8, 3 steps.

    Keeps the experiment's resolution, attention and schedule, so the test exercises
    the same architecture table at a fraction of the width.
    """
    c.model.width = width
    c.train.batch_size = 8  # Divisible by the 4 host devices of the test session.
    c.train.num_steps = 3
    c.checkpoint.every_steps = 2
    c.checkpoint.keep = 2
    c.train.ema_start = 0  # So that the EMA of G differs from G within the few steps.
    c.log.every_steps = 1
    c.log.sample_every_steps = 2
    c.log.grid_rows = 2
    c.log.grid_classes = min(c.log.grid_classes, 4)
    c.eval.every_steps = 0
    c.eval.num_samples = 64
    c.eval.batch_size = 32
