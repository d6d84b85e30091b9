"""Oxford Flowers 102 at 96 px, conditional on 102 classes (docs/original.md).

The original: SAGAN with attention at 24x24, batch 128, G 5e-5 / D 2e-4, D:G 1:1, 400
epochs. Like AnimeFace it collapsed per class (clean images, but z-interpolation within a
class returns one image); `sngan` gives the comparison run (no attention, D:G = 5:1).

Data: TFDS `oxford_flowers102`, all three splits (8,189 images): 8,189 // 128 = 63 steps
per epoch, 400 epochs = 25,200 steps. The photos are not square: we crop the central
square; `original` stretches them to 96x96 as the original did, and trains 401 epochs.

  python -m sagan_jax.main --config=configs/flowers.py --workdir=/tmp/flowers
  python -m sagan_jax.main --config=configs/flowers.py:sngan --workdir=/tmp/flowers_sngan
"""
from configs import common96


def get_config(arg=None):
    """`arg`: optional 'sngan', 'original' and/or 'test'."""
    return common96.get_96px_config(arg, "oxford_flowers102", 400, original_stretches=True)
