"""What the original's two 96 px experiments share (`animeface.py`, `flowers.py`).

A helper of those files, not a config (no `get_config`), like `common.py`.
"""
from __future__ import annotations

import ml_collections

from configs import common


def get_96px_config(arg: str | None, name: str, epochs: int,
                    original_stretches: bool = False) -> ml_collections.ConfigDict:
    """The original's 96 px SAGAN runs (AnimeFace, Flowers), or `sngan` for comparison.

    SAGAN: attention at 24x24 (after G's third block, after D's first non-optimized
    block), batch 128, G 5e-5 / D 2e-4, D:G 1:1, BN statistics per device (the original
    wrapped G and D in `DataParallel`). `sngan`: no attention, D:G 5:1.

    Args:
      arg: optional 'sngan', 'original' and/or 'test'.
      name: the dataset's `data.name`.
      epochs: training length of the original's write-up.
      original_stretches: with `original`, stretch non-square images to the square
        instead of cropping (the original's Oxford Flowers).
    """
    args = common.parse_arg(arg, {"sngan": bool, "original": bool, "test": bool})
    c = common.get_base_config()
    c.data.name = name
    c.model.resolution = 96
    c.model.g_attention = c.model.d_attention = () if args.get("sngan") else (24,)
    c.update_rule.n_dis = 5 if args.get("sngan") else 1
    c.optim.g_lr, c.optim.d_lr = 5e-5, 2e-4
    c.train.batch_size = 128
    c.train.bn_sync = False
    common.original_protocol(c, epochs)
    c.log.grid_classes = 16
    c.data.center_crop = not (original_stretches and args.get("original"))
    common.finish(c, args)
    return c
