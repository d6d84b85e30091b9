"""The shared config vocabulary, the `arg` parser, and the `test` and `original` variants.

Every experiment file (`configs/<dataset>.py`) starts from `get_base_config()` and sets
what its experiment changes (the 96 px ones through `configs/common96.py`). Like this
module, that one is a helper, not a config: it has no `get_config`. Configs are run from
the repository root:
`python -m sagan_jax.main --config=configs/cifar10.py:case=5 --workdir=DIR`.

Lengths are given in epochs or in steps (`train.num_epochs` / `train.num_steps`, and
likewise for grids, checkpoints and scores); epochs become steps when the run starts,
from the dataset's real size and the batch size (`sagan_jax.periods`), and a value in
steps, when not 0, overrides the one in epochs. 0 means "never" / "off" throughout.
"""
from __future__ import annotations

import ml_collections

# Learning rates of the original (docs/original.md, "Training"): TTUR, or 2e-4 for both.
TTUR_LRS = (1e-4, 4e-4)
NO_TTUR_LRS = (2e-4, 2e-4)
# The "D loss limit" rule of the original: mean of the last 5 D losses >= 0.5 -> 4 D-only steps.
D_LOSS_LIMIT = 0.5
OFF = float("inf")


def get_base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every experiment (the original's choices where it had one)."""
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.resolution = 32  # Selects the architecture table (docs/original.md, "Networks").
    c.model.width = 1.0  # Channel multiplier; 1.0 = the original's channel counts.
    c.model.z_dim = 128
    c.model.conditional = True
    c.model.g_attention = ()  # Resolutions after which G has a self-attention block.
    c.model.d_attention = ()
    c.model.g_sn = True  # The original spectrally normalises G as well as D.
    c.model.dtype = "float32"  # 'bfloat16' computes in bf16, parameters stay fp32.
    # 'standard': torch.nn.utils.spectral_norm's persistent power iteration; 'original':
    # the original code's one step from a fixed u0 in every pass, with its gradient.
    c.model.sn_mode = "standard"
    c.model.sn_iters = 1  # Power-iteration steps per training pass ('standard').
    c.model.sn_eps = 1e-12
    # 'xavier': Xavier-uniform weights, zero biases; 'original': what the original's
    # layers ended up with (PyTorch's defaults, docs/original.md "Initialisation as coded").
    c.model.init = "xavier"
    c.model.cbn_init = "zeros"  # Class embeddings of conditional BN: 'zeros' or 'xavier'.
    # BN running variances unbiased, as PyTorch keeps them (only eval-mode G sees them).
    c.model.bn_unbiased_var = False
    # The attention blocks' 1x1 convs have biases (the original's; the SAGAN paper's
    # official TF code has none).
    c.model.attention_bias = True
    # G's last BN: 'conditional' (the original's) or 'plain', BN with its own affine (the
    # SAGAN paper's official TF code).
    c.model.g_out_bn = "conditional"

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    # The images are read at G's resolution: one value, whichever name is set.
    c.data.image_size = c.model.get_ref("resolution")
    c.data.channels = 3
    c.data.path = ""  # Folder datasets: root with one sub-folder per class.
    c.data.data_dir = ""  # TFDS data_dir (a local folder or gs://...); '' = TFDS's default.
    # TFDS: read the prepared dataset from TFDS's public bucket (TPU pods; not with data_dir).
    c.data.try_gcs = False
    c.data.manual_dir = ""  # TFDS: folder holding the downloaded source archives.
    c.data.variant = "labelled"  # STL-10 also has 'unlabelled'.
    c.data.resize = "bilinear"
    c.data.center_crop = True  # False stretches non-square images to the square.
    c.data.prefetch = 2  # Batches prepared ahead of the step (0 = none).
    # 'memory' decodes the dataset once and holds it; 'streamed' reads each batch when it
    # is needed (grain; folders and TFDS datasets prepared as ArrayRecord); 'auto' streams
    # where this process's decoded share would fill more than a quarter of the memory.
    c.data.pipeline = "auto"
    c.data.read_threads = 8  # Streamed: batches decoded at once, in threads of each process.
    # Streamed: grain worker processes that decode (0 = threads of the training process).
    c.data.workers = 0
    c.data.random_flip = False  # Mirror each image with probability 1/2 (not the original's).

    c.optim = ml_collections.ConfigDict()
    c.optim.g_lr, c.optim.d_lr = TTUR_LRS
    c.optim.b1 = 0.0
    c.optim.b2 = 0.9
    c.optim.lr_scaling = "none"  # 'linear': rates x batch_size / base_batch.
    c.optim.base_batch = 256

    c.update_rule = ml_collections.ConfigDict()
    c.update_rule.n_dis = 1  # D steps per G step (SAGAN 1, SNGAN 5).
    c.update_rule.d_loss_limit = OFF  # inf switches the D-loss-limit rule off.
    c.update_rule.window = 5
    c.update_rule.d_only_steps = 4
    # 'capped': the write-up's D:G 5:1 while the loss is high; 'original': the code's rule
    # (per-epoch window and countdown; G starved while the loss stays high).
    c.update_rule.limit_mode = "capped"

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 256  # Global batch, split over all devices.
    c.train.num_epochs = 100
    c.train.num_steps = 0  # Not 0: the run length in steps, overriding num_epochs.
    c.train.seed = 0
    c.train.loss = "hinge"
    c.train.ema_decay = 0.999
    c.train.ema_start = 0
    c.train.sample_with_ema = True
    # Weight of MSGAN's mode-seeking term in G's loss (not in the original; 0 = off).
    c.train.mode_seeking = 0.0
    # DiffAugment of everything D sees (not in the original; sagan_jax/augment.py):
    # '' (off) or a comma-separated subset of 'translation,cutout'.
    c.train.augment = ""
    # True: BN statistics of the global batch (the original's one-GPU runs); False: of
    # each device's slice (its DataParallel runs at 96 px).
    c.train.bn_sync = True
    # Up to this many steps per call of the compiled step, in a device-side loop that
    # ends where anything periodic is due (saves the host work of each step on TPUs and
    # fast GPUs). Keep 1 on CPU: XLA:CPU runs convolutions in the loop ~18x slower.
    c.train.steps_per_dispatch = 1
    # Matmuls and convolutions of training and in-training scoring: '' leaves JAX's default
    # (TF32 or bf16 passes on GPUs/TPUs); 'highest' is full float32 (no effect on CPU).
    c.train.matmul_precision = ""
    # XLA:CPU only, the step's convolutions: 'default' (XLA's: YNNPACK) or 'eigen', faster
    # for small ones (the digits quick start), slower for large ones (CIFAR-10's); the
    # figures are in benchmarks/RESULTS.md.
    c.train.cpu_convolutions = "default"
    # JAX's compiled programs, kept for the next start (sagan_jax.startup): '' = ~/.cache/
    # sagan_jax/jax_compilation_cache (or $JAX_COMPILATION_CACHE_DIR), a folder or gs://..., or 'off'.
    c.train.compile_cache_dir = ""

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_epochs = 5
    c.checkpoint.every_steps = 0
    c.checkpoint.offset_epochs = 0  # Not 0: the first checkpoint's epoch, then every N.
    c.checkpoint.offset_steps = 0
    c.checkpoint.keep = 3  # The latest N; 0 keeps all.

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 100
    c.log.sample_every_epochs = 1
    c.log.sample_every_steps = 0
    c.log.grid_rows = 8  # Samples per class (rows); one column per class.
    c.log.grid_classes = 10  # At most this many classes (columns) in a grid.

    c.eval = ml_collections.ConfigDict()
    c.eval.every_epochs = 0  # In-training scores; 0 = none.
    c.eval.every_steps = 0
    c.eval.offset_epochs = 0  # Not 0: the first in-training score's epoch, then every N.
    c.eval.offset_steps = 0
    c.eval.num_samples = 10_000
    c.eval.batch_size = 500
    c.eval.splits = 10
    c.eval.feature_net = "inception"
    c.eval.inception_weights = ""  # '' = ~/.cache/sagan_jax/inception-2015-12-05.npz.
    c.eval.stats_dir = ""  # '' = ~/.cache/sagan_jax.
    c.eval.precision = "highest"  # Inception's convolutions: 'highest' (fp32) or 'default'.
    c.eval.kid_subsets = 100  # KID as torch-fidelity: 100 subsets of 1000, seed 2020.
    c.eval.kid_subset_size = 1000
    c.eval.kid_seed = 2020
    c.eval.nearest_k = 3  # Precision/recall/density/coverage's k (Kynkaanniemi et al. 2019).
    c.eval.best_by = "FID"  # `render --step=best`'s default: lowest 'FID' or highest 'IS'.

    # Early warnings of the original's two failures (sagan_jax/monitors.py,
    # sagan_jax/evaluation/diversity.py, README).
    c.monitor = ml_collections.ConfigDict()
    c.monitor.d_jump_short = 20  # Steps in the recent mean of D's loss...
    c.monitor.d_jump_long = 500  # ...against the median / MAD of the steps before them.
    c.monitor.d_jump_threshold = 3.0  # In robust standard deviations; inf = off.
    c.monitor.checkpoint_on_jump = True  # An extra checkpoint, kept, where a jump fires.
    # A class whose samples' diversity is below this fraction of its real images' is
    # named as collapsed (computed with every evaluation).
    c.monitor.collapse_threshold = 0.6
    return c


def original_protocol(c: ml_collections.ConfigDict, epochs: int) -> None:
    """The original's training length and output rhythm (docs/original.md, "Training").

    A sample grid every epoch, a checkpoint every 5 epochs and in-training scores with
    its protocol (10k samples, 1 split) at the same rhythm.
    """
    c.train.num_epochs = epochs
    c.log.sample_every_epochs = 1
    c.checkpoint.every_epochs = c.eval.every_epochs = 5
    c.eval.num_samples, c.eval.splits = 10_000, 1


def make_original(c: ml_collections.ConfigDict) -> None:
    """Switches on every behaviour of the original code that our defaults differ from.

    The README's "Differences from the original" lists each switch; the epochs (+1: the
    scripts loop `range(epochs + 1)`) and the dataset-specific ones (Flowers stretched)
    are set by the experiment files.
    """
    c.model.sn_mode = "original"
    c.model.init = "original"
    c.model.cbn_init = "xavier"
    c.update_rule.limit_mode = "original"
    c.train.num_epochs += 1
    c.train.sample_with_ema = False  # The original had no EMA of G.
    # Checkpoints after epochs 1, 6, 11, ... (the scripts save when `epoch % 5 == 0`),
    # all kept, so that the best one can be scored and rendered after training.
    c.checkpoint.offset_epochs = 1
    c.checkpoint.keep = 0
    # Its IS: every saved G (so in training at epochs 1, 6, 11, ...), eval-mode BN with
    # PyTorch's unbiased running variance, float32 matmuls as on 2019 GPUs; its best
    # checkpoint was the best IS.
    c.eval.offset_epochs = 1
    c.model.bn_unbiased_var = True
    c.train.matmul_precision = "highest"
    c.eval.best_by = "IS"


def finish(c: ml_collections.ConfigDict, args: dict) -> None:
    """Applies the `original` and `test` arguments, in that order."""
    if args.get("original"):
        make_original(c)
    if args.get("test"):
        make_test_variant(c)


_TRUE, _FALSE = ("", "1", "true", "yes"), ("0", "false", "no")


def parse_arg(arg: str | None, allowed: dict[str, type]) -> dict:
    """Parses 'case=5,test' into {'case': 5, 'test': True}.

    Args:
      arg: the text after ':' in `--config=configs/x.py:arg`, or None.
      allowed: key -> type. `bool` keys are flags: `test` or `test=true|1|yes` is True,
        `test=false|0|no` is False.

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
        if allowed[key] is bool:
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(f"config argument {key}={value!r} is not a flag value; write "
                                 f"{key}, {key}=true or {key}=false.")
            out[key] = value.lower() in _TRUE
        else:
            try:
                out[key] = allowed[key](value)
            except ValueError:
                raise ValueError(f"config argument {key}={value!r} is not a valid "
                                 f"{allowed[key].__name__}.") from None
    return out


def choose(arg_value: int | None, default: int, table: dict) -> int:
    """Validates a table row number such as `case=`."""
    value = default if arg_value is None else arg_value
    if value not in table:
        raise ValueError(f"no row {value} in this table; choose one of {sorted(table)}.")
    return value


def make_test_variant(c: ml_collections.ConfigDict, width: float = 1 / 16) -> None:
    """Shrinks `c` in place to a tiny, offline run: narrow nets, batch 8, 3 steps.

    Keeps the experiment's resolution, attention and update rule, so the test exercises
    the same architecture table at a fraction of the width.
    """
    c.model.width = width
    c.train.batch_size = 8  # Divisible by the 4 host devices of the test session.
    c.train.num_steps = 3
    c.checkpoint.every_steps = 2
    c.checkpoint.offset_epochs = c.checkpoint.offset_steps = 0
    c.checkpoint.keep = 2
    c.train.ema_start = 0  # So that the EMA of G differs from G within the few steps.
    c.log.every_steps = 1
    c.log.sample_every_steps = 2
    c.log.grid_rows = 2
    c.log.grid_classes = min(c.log.grid_classes, 4)
    c.eval.every_epochs = c.eval.every_steps = 0
    c.eval.num_samples = 64
    c.eval.batch_size = 32
