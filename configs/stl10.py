"""STL-10 resized to 48 px: the original's three conditional runs (docs/original.md).

Labelled train+test splits (13,000 images, 10 classes), batch 256, 400 epochs
(13,000 // 256 = 50 steps per epoch, 20,000 steps; 401 epochs with `original`), D:G
1:1, no D loss limit:

| case | TTUR | attention | original IS |
|---|---|---|---|
| 0 | no  | no  | 6.073 |
| 1 | yes | no  | 6.122 |
| 2 | yes | yes | 5.640 |

IS as in configs/cifar10.py (torchvision Inception, 10k samples, 1 split): compare trends.

  python -m sagan_jax.main --config=configs/stl10.py:case=1 --workdir=/tmp/stl10_case1
  python -m sagan_jax.main --config=configs/stl10.py:case=2,original --workdir=/tmp/stl2_orig
  python -m sagan_jax.main --config=configs/stl10.py:case=2,test --workdir=/tmp/t  # tiny
"""
from configs import common

# case -> (TTUR, attention).
CASES = {0: (False, False), 1: (True, False), 2: (True, True)}


def get_config(arg=None):
    """`arg`: 'case=N' (0..2, default 2), optionally with ',original', ',test'."""
    args = common.parse_arg(arg, {"case": int, "original": bool, "test": bool})
    ttur, attention = CASES[common.choose(args.get("case"), 2, CASES)]
    c = common.get_base_config()
    c.data.name = "stl10"
    c.model.resolution = 48
    c.optim.g_lr, c.optim.d_lr = common.TTUR_LRS if ttur else common.NO_TTUR_LRS
    # Attention at 12x12: after G's first block, after D's first non-optimized block.
    c.model.g_attention = c.model.d_attention = (12,) if attention else ()
    c.train.batch_size = 256
    common.original_protocol(c, 400)
    common.finish(c, args)
    return c
