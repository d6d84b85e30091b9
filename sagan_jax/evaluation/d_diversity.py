"""The class-wise collapse check in D's feature space, for runs without a feature network.

With Inception's weights (or the digits net) the evaluator measures each class's
diversity in that network's features (`Evaluator.evaluate`). Without them a run still
gets the check, in the space of D's penultimate features (its sum-pooled activations,
before the linear head and the projection): the same measure (`diversity.class_diversity`)
of generated and real images of each class, both through the current D. D changes as it
trains, so the real images' diversity is measured again each time, on a fixed sample of
at most `PER_CLASS` real images per class.
"""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from sagan_jax import parallel
from sagan_jax.evaluation.diversity import ClassDiversity, class_diversity
from sagan_jax.gan import GAN

# Real and generated images per class: a mean over PER_CLASS * (PER_CLASS - 1) / 2 pairs.
PER_CLASS = 64


def _real_sample(batches: Iterable[dict], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `PER_CLASS` real images of each class (all images as one class when 0)."""
    keep: dict[int, list[np.ndarray]] = {}
    for batch in batches:
        labels = np.asarray(batch["label"]) if num_classes else np.zeros(len(batch["image"]))
        for image, label in zip(np.asarray(batch["image"]), labels.astype(int)):
            if len(keep.setdefault(label, [])) < PER_CLASS:
                keep[label].append(image)
    labels = np.concatenate([np.full(len(v), k, np.int32) for k, v in sorted(keep.items())])
    return np.concatenate([np.stack(v) for _, v in sorted(keep.items())]), labels


class DFeatureDiversity:
    """Per-class diversity ratios of generated to real images in D's features."""

    def __init__(self, gan: GAN, mesh, real_batches: Iterable[dict]):
        """Takes a fixed sample of real images.

        Args:
          gan: the GAN (its D gives the features, its label count the classes).
          mesh: the data mesh; batches are padded to a multiple of its size.
          real_batches: one pass over real images, dicts of 'image' float32 (b, H, W, C)
            in [-1, 1] and 'label' (b,).
        """
        self.gan, self.mesh = gan, mesh
        self.real, self.real_labels = _real_sample(real_batches, gan.num_classes)
        spec = P(parallel.DATA_AXIS)

        def features(d_variables, images, labels):
            _, out = gan.discriminator.apply(d_variables, images, gan.labels_or_none(labels),
                                             mutable=["intermediates"])
            return out["intermediates"]["features"][0]

        self._features = parallel.data_parallel(features, mesh, in_specs=(P(), spec, spec),
                                                out_specs=spec)

    def _run(self, d_variables, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        n, pad = len(images), -len(images) % self.mesh.size
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        return np.asarray(jax.device_get(self._features(d_variables, images, labels)))[:n]

    def check(self, d_variables, generate: Callable, key: jax.Array,
              collapse_threshold: float) -> ClassDiversity:
        """The class-wise collapse check, as `Evaluator.evaluate` gives it.

        Args:
          d_variables: D's {'params', **state}.
          generate: `generate(key, labels) -> images` (sharded over the mesh, see
            `sampling.make_generate_fn`); called once with `PER_CLASS` labels per class.
          key: the key of the generated images.
          collapse_threshold: classes whose diversity ratio is below it are collapsed
            (monitor.collapse_threshold).
        """
        n = max(self.gan.num_classes, 1)
        labels = np.repeat(np.arange(n, dtype=np.int32), PER_CLASS)
        labels = np.concatenate([labels, np.zeros(-len(labels) % self.mesh.size, np.int32)])
        fake = np.asarray(jax.device_get(generate(key, jnp.asarray(labels))))[:n * PER_CLASS]
        labels = labels[:n * PER_CLASS]
        return ClassDiversity.compare(
            class_diversity(self._run(d_variables, fake, labels), labels, n),
            class_diversity(self._run(d_variables, self.real, self.real_labels),
                            self.real_labels, n),
            collapse_threshold, conditional=bool(self.gan.num_classes))
