"""CIFAR-10 at 32 px: the original's two experiment tables (docs/original.md).

`case=0..7` (default 2) reproduces the ablation table, batch 256, 100 epochs, or 200
epochs for the runs with the D loss limit (their G gets fewer updates):

| case | D loss limit | conditional | TTUR | attention | original IS |
|---|---|---|---|---|---|
| 0 | none | yes | no  | no  | 4.371 |
| 1 | none | yes | yes | no  | 5.559 |
| 2 | none | yes | yes | yes | 6.530 |
| 3 | 0.5  | yes | no  | no  | 6.372 |
| 4 | 0.5  | yes | yes | no  | 6.525 |
| 5 | 0.5  | yes | yes | yes | 6.241 |
| 6 | none | no  | yes | yes | 5.673 |
| 7 | 0.5  | no  | yes | yes | 6.423 |

`lrscale=0..3` reproduces the batch / learning-rate table (conditional, TTUR, attention,
D:G 1:1, 100 epochs); rows 0 and 1 use linear scaling of the 1e-4 / 4e-4 reference rates:

| lrscale | batch | G lr | D lr | original IS |
|---|---|---|---|---|
| 0 | 64  | 2.5e-5 | 1e-4 | 6.908 |
| 1 | 128 | 5e-5   | 2e-4 | 6.835 |
| 2 | 64  | 1e-4   | 4e-4 | 6.883 |
| 3 | 128 | 1e-4   | 4e-4 | 6.602 |

The original's IS used torchvision's Inception, 10k samples, 1 split (real CIFAR-10 ~10.25
there); our IS uses the TF 2015 Inception, so compare trends, not the numbers.
Training length is in epochs, turned into steps at run time: 50,000 // batch steps per
epoch (195 at batch 256), e.g. case 2 is 100 x 195 = 19,500 steps, and 50 epochs at any
other batch size keep 50 epochs. Sample grids every epoch, checkpoints and IS every 5
epochs. `original` trains exactly as the original code did (README, "Differences from
the original"): 101 epochs, or 201 with the D loss limit, as its scripts looped.

  python -m sagan_jax.main --config=configs/cifar10.py:case=5 --workdir=/tmp/cifar10_case5
  python -m sagan_jax.main --config=configs/cifar10.py:lrscale=0 --workdir=/tmp/cifar10_lr0
  python -m sagan_jax.main --config=configs/cifar10.py:case=5,original --workdir=/tmp/c5_orig
  python -m sagan_jax.main --config=configs/cifar10.py:case=2,test --workdir=/tmp/t  # tiny
"""
from configs import common

# case -> (D loss limit, conditional, TTUR, attention), docs/original.md's CIFAR-10 table.
CASES = {
    0: (common.OFF, True, False, False),
    1: (common.OFF, True, True, False),
    2: (common.OFF, True, True, True),
    3: (common.D_LOSS_LIMIT, True, False, False),
    4: (common.D_LOSS_LIMIT, True, True, False),
    5: (common.D_LOSS_LIMIT, True, True, True),
    6: (common.OFF, False, True, True),
    7: (common.D_LOSS_LIMIT, False, True, True),
}
# lrscale -> (batch, G lr, D lr, lr_scaling); the rates are before scaling.
LR_SCALES = {
    0: (64, 1e-4, 4e-4, "linear"),
    1: (128, 1e-4, 4e-4, "linear"),
    2: (64, 1e-4, 4e-4, "none"),
    3: (128, 1e-4, 4e-4, "none"),
}


def get_config(arg=None):
    """`arg`: 'case=N' (0..7) or 'lrscale=N' (0..3), optionally with ',original', ',test'."""
    args = common.parse_arg(arg, {"case": int, "lrscale": int, "original": bool, "test": bool})
    if "case" in args and "lrscale" in args:
        raise ValueError("give either case= or lrscale=, not both.")
    c = common.get_base_config()
    c.data.name = "cifar10"
    c.model.resolution = 32
    epochs = 100
    if "lrscale" in args:
        batch, g_lr, d_lr, scaling = LR_SCALES[common.choose(args["lrscale"], 0, LR_SCALES)]
        c.train.batch_size = batch
        c.optim.g_lr, c.optim.d_lr, c.optim.lr_scaling = g_lr, d_lr, scaling
        c.model.g_attention = c.model.d_attention = (8,)
    else:
        limit, conditional, ttur, attention = CASES[common.choose(args.get("case"), 2, CASES)]
        c.update_rule.d_loss_limit = limit
        c.model.conditional = conditional
        c.optim.g_lr, c.optim.d_lr = common.TTUR_LRS if ttur else common.NO_TTUR_LRS
        # Attention at 8x8: after G's first block, after D's first non-optimized block.
        c.model.g_attention = c.model.d_attention = (8,) if attention else ()
        epochs = 200 if limit != common.OFF else 100
    common.original_protocol(c, epochs)
    common.finish(c, args)
    return c
