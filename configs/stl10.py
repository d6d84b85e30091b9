"""STL-10 resized to 48 px: the original's three conditional runs (../shared/SEED.md).

Labelled train+test splits (13,000 images, 10 classes), batch 256, 400 epochs
(13,000 // 256 = 50 steps per epoch, 20,000 steps), D:G 1:1, no D loss limit:

| case | TTUR | attention | original IS |
|---|---|---|---|
| 0 | no  | no  | 6.073 |
| 1 | yes | no  | 6.122 |
| 2 | yes | yes | 5.640 |

IS as in configs/cifar10.py (torchvision Inception, 10k samples, 1 split): compare trends.

  python -m sagan_jax.main --config=configs/stl10.py:case=1 --workdir=/tmp/stl10_case1
  python -m sagan_jax.main --config=configs/stl10.py:case=2,test --workdir=/tmp/t  # tiny
"""
from configs import common

NUM_TRAIN = 13_000
# case -> (TTUR, attention).
CASES = {0: (False, False), 1: (True, False), 2: (True, True)}


def get_config(arg=None):
    """`arg`: 'case=N' (0..2, default 2), optionally with ',test'."""
    args = common.parse_arg(arg, {"case": int, "test": bool})
    ttur, attention = CASES[common.choose(args.get("case"), 2, CASES)]
    c = common.get_base_config()
    c.data.name = "stl10"
    c.data.variant = "labelled"
    c.data.image_size = 48
    c.model.resolution = 48
    c.optim.g_lr, c.optim.d_lr = common.TTUR_LRS if ttur else common.NO_TTUR_LRS
    # Attention at 12x12: after G's first block, after D's first non-optimized block.
    c.model.g_attention = c.model.d_attention = (12,) if attention else ()
    c.train.batch_size = 256
    common.train_for_epochs(c, 400, NUM_TRAIN)
    if args.get("test"):
        common.make_test_variant(c)
    return c
