"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 scans, 10 classes, no download."""
from __future__ import annotations

import numpy as np

from sagan_jax.data import sources


@sources.register("digits")
def load(data_cfg, preprocess, process_index: int, process_count: int) -> sources.Examples:
    """The digits, resized to `data.image_size` (the quick start's data)."""
    del data_cfg  # Nothing to choose: the data ships with scikit-learn.
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    share = sources.process_share(len(digits.target), process_index, process_count)
    # Pixel values are counts 0..16 of a 4x4 grid of the 32x32 bitmap: 0 -> 0 and 16 -> 255,
    # so that black and white land exactly on -1 and +1 after scaling.
    images = digits.images[share, :, :, None].astype(np.float32) * (255.0 / 16.0)
    return sources.Examples(np.asarray(preprocess(images)),
                            digits.target[share].astype(np.int32), 10)
