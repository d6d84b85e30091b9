"""AnimeFace Character Dataset at 96 px, conditional on 176 characters (docs/original.md).

The original: SAGAN with attention at 24x24, batch 128, G 5e-5 / D 2e-4 (no further
scaling), D:G 1:1, 250 epochs. Its finding: images look clean but SAGAN collapsed per class
(interpolating z within a class returns the same image); SNGAN with D:G = 5:1 did not.
`sngan` gives that comparison run: no attention, 5 D steps per G step.

The data is a class-per-folder image tree (the dataset's `thumb/` folder): set
--config.data.path. With its 14,490 images, 14,490 // 128 = 113 steps per epoch, 250
epochs = 28,250 steps (251 epochs with `original`); epochs become steps at run time, so
other copies of the data train for the same number of epochs.

  python -m sagan_jax.main --config=configs/animeface.py \\
      --config.data.path=/data/animeface-character-dataset/thumb --workdir=/tmp/animeface
  python -m sagan_jax.main --config=configs/animeface.py:sngan --config.data.path=... --workdir=...
"""
from configs import common96


def get_config(arg=None):
    """`arg`: optional 'sngan', 'original' and/or 'test'."""
    return common96.get_96px_config(arg, "animeface", 250)
