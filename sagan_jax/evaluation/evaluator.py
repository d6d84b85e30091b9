"""IS, FID, KID and the other scores of a generator, batched and sharded over the mesh.

    ev = Evaluator.create(config.eval, config.data, mesh,
                          real_batches=lambda: ds.eval_iterator(config.eval.batch_size))
    scores, diversity = ev.evaluate(generate, num_classes, num_samples, key,
                                    config.monitor.collapse_threshold)
    # scores: {'IS', 'IS_std', 'FID', 'KID', 'precision', 'recall', 'density',
    #          'coverage'}, for a conditional G also 'intra_fid' and 'intra_fid/<class>',
    #          and with the digits net 'sample_accuracy' and 'sample_accuracy/<class>';
    # diversity: the class-wise collapse check.

Generation is the caller's (`generate(key, labels)`, normally compiled and sharded);
the feature network runs as one compiled `shard_map` over the data axis, so every device
scores its slice of each batch. Features come back to the host one batch behind the
device (so transfers overlap compute), and the scores are computed there in float64
(`scores.py`). Each sample's label depends only on `key` and its index, so, for a given
set of images, the scores do not depend on the eval batch size. In a run of several
processes every process takes part in each batch and gets all the features, and the
reference statistics are computed by all processes together from their own shares of the
real images (`real_features`): the same statistics as one process's.

Precision, recall, density and coverage (`manifold.py`, k = `eval.nearest_k`) compare
equal numbers of real and generated samples, as their papers do: n = min(num_samples,
the reference's real pool (`reference.KID_POOL_SIZE`, 10,000, or all real images when
fewer)); the generated side is the first n samples, the real side a fixed random n of the
pool (seed `eval.kid_seed`). Intra-FID (`conditional.py`) is computed for a conditional
G against the reference's per-class statistics (skipped, with a log line, where the
reference keeps none, or where a class has fewer than 2 samples); sample accuracy
(the share of samples that the classifier labels as their class) only with the digits
net, the one feature network that is a classifier of the generator's classes.

With `eval.feature_net='inception'` and no converted weights, `create` logs one warning
that says how to get them and returns None (training goes on without scores), unless
`required=True` (the evaluate CLI), which raises instead.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from sagan_jax import parallel
from sagan_jax.evaluation import conditional, digits_net, inception, manifold, reference, scores
from sagan_jax.evaluation.diversity import ClassDiversity

_PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "default": jax.lax.Precision.DEFAULT}


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole global array on this host (all processes take part)."""
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _rebatch(parts: Iterable[tuple[np.ndarray, ...]],
             batch_size: int) -> Iterator[tuple[tuple[np.ndarray, ...], int]]:
    """Re-cut a stream of tuples of (b, ...) arrays into (batch_size, ...) ones, the last
    zero-padded.

    Yields (the tuple's re-cut arrays, number of real rows in them).
    """
    buffer, held = [], 0
    for part in parts:
        buffer.append(part)
        held += len(part[0])
        while held >= batch_size:
            merged = [np.concatenate(arrays) for arrays in zip(*buffer)]
            yield tuple(a[:batch_size] for a in merged), batch_size
            buffer, held = [tuple(a[batch_size:] for a in merged)], held - batch_size
    if held:
        merged = [np.concatenate(arrays) for arrays in zip(*buffer)]
        yield tuple(np.concatenate([a, np.zeros((batch_size - held,) + a.shape[1:], a.dtype)])
                    for a in merged), held


_END = object()


def _with_more(items: Iterable) -> Iterator[tuple[object, bool]]:
    """(item, whether another item follows it) of each item (one read ahead)."""
    iterator = iter(items)
    current = next(iterator, _END)
    while current is not _END:
        following = next(iterator, _END)
        yield current, following is not _END
        current = following


def _feature_network(eval_cfg):
    """(name, extract(variables, images) -> (features, logits), variables) of the config.

    Raises FileNotFoundError (with instructions) when the Inception weights are missing.
    """
    name = eval_cfg.feature_net
    if name == "inception":
        variables = inception.load_variables(eval_cfg.inception_weights or inception.DEFAULT_WEIGHTS)
        if eval_cfg.precision not in _PRECISIONS:
            raise ValueError(f"unknown eval.precision {eval_cfg.precision!r}; set it to one of "
                             f"{sorted(_PRECISIONS)}.")
        extract = functools.partial(inception.extract, precision=_PRECISIONS[eval_cfg.precision])
        return name, extract, variables
    if name == "digits":
        return name, digits_net.extract, digits_net.load_variables()
    raise ValueError(f"eval.feature_net={name!r} is not known; use 'inception' or 'digits'.")


class Evaluator:
    """Scores generators against cached reference statistics of the real images."""

    def __init__(self, feature_net: str, extract: Callable, variables, mesh, eval_cfg):
        """Prefer `create`, which also loads or computes the reference statistics.

        Args:
          feature_net: 'inception' or 'digits' (for logs).
          extract: per-replica `(variables, images) -> (features, logits)`.
          variables: the feature network's variables.
          mesh: 1-D data mesh; `eval_cfg.batch_size` must divide over it.
          eval_cfg: the config's `eval` section (batch_size: images per generate call;
            splits: IS splits; kid_subsets, kid_subset_size, kid_seed: KID's subsets;
            nearest_k: the k of precision, recall, density and coverage).
        """
        parallel.check_divisible(eval_cfg.batch_size, mesh)
        self.feature_net = feature_net
        self.mesh = mesh
        self.batch_size = eval_cfg.batch_size
        self.splits = eval_cfg.splits
        self.kid_subsets = eval_cfg.kid_subsets
        self.kid_subset_size = eval_cfg.kid_subset_size
        self.kid_seed = eval_cfg.kid_seed
        # Configs written before nearest_k existed score with the papers' k.
        self.nearest_k = eval_cfg.get("nearest_k", manifold.NEAREST_K)
        self.reference: reference.ReferenceStats | None = None
        self._sqrt_sigma_ref: np.ndarray | None = None
        self._variables = jax.device_put(variables, parallel.replicated_sharding(mesh))
        spec = P(parallel.DATA_AXIS)
        self._extract = parallel.data_parallel(extract, mesh, in_specs=(P(), spec),
                                               out_specs=(spec, spec))
        self._labels = jax.jit(self._make_labels, static_argnums=(2, 3),
                               out_shardings=parallel.batch_sharding(mesh))

    @classmethod
    def create(cls, eval_cfg, data_cfg, mesh, real_batches: Callable[[], Iterable[dict]], *,
               required: bool = False) -> "Evaluator | None":
        """An evaluator with reference statistics (loaded from the cache or computed).

        Args:
          eval_cfg: the config's `eval` section (batch_size, splits, feature_net,
            inception_weights, stats_dir, precision: 'highest' (float32 convolutions, as
            the TF graph) or 'default' (lets XLA use TF32/bf16 passes on GPU/TPU: faster,
            not comparable), KID's subsets).
          data_cfg: the config's `data` section (names the reference statistics).
          mesh: 1-D data mesh.
          real_batches: returns one pass over this process's share of the real images
            (see `real_features`), dicts with 'image' float32 (b, H, W, C) in [-1, 1] and
            int 'label' (b,); called only when the cache is missing. Then all processes
            compute the statistics together (the same on each, whatever the process
            count), process 0 writes the cache, and all wait for it.
          required: raise (instead of warning and returning None) without weights.

        Returns:
          The evaluator, or None when the Inception weights are missing and not required.
        """
        try:
            name, extract, variables = _feature_network(eval_cfg)
        except FileNotFoundError as e:
            if required:
                raise
            logging.warning("%s Training goes on without IS/FID/KID.", e)
            return None
        ev = cls(name, extract, variables, mesh, eval_cfg)
        path = reference.cache_path(eval_cfg.stats_dir, name, data_cfg)
        cached = np.asarray(multihost_utils.process_allgather(np.int32(path.exists())), bool)
        if cached.all():
            stats = reference.ReferenceStats.load(path)
        else:
            # All processes compute them together. Process 0 writes the file; where it
            # already had one, the processes that lack it look in folders of their own
            # (eval.stats_dir on each host's disk) and each writes its copy.
            if cached.any():
                logging.warning("Reference statistics %s are missing on processes %s of %d "
                                "(eval.stats_dir is not one shared folder); computing them "
                                "again.", path, np.flatnonzero(~cached).tolist(), len(cached))
            logging.info("Computing %s reference statistics -> %s", name, path)
            features, labels = ev.real_features(real_batches())
            stats = reference.ReferenceStats.from_features(features, labels,
                                                           seed=eval_cfg.kid_seed)
            index = jax.process_index()
            writes = not cached[index] and (index == 0 or cached[0])
            # Also the barrier: no process reads on before the file is written, and where
            # writing fails (a read-only bucket) every process stops.
            parallel.together(lambda: stats.save(path) if writes else None,
                              f"writing reference statistics {path}")
        ev.set_reference(stats)
        logging.info("Reference statistics: %d real images (%s)", stats.num_examples, path)
        return ev

    def set_reference(self, stats: reference.ReferenceStats) -> None:
        """Use `stats` as the real images' statistics (and precompute sqrt(sigma))."""
        self.reference = stats
        self._sqrt_sigma_ref = scores.sqrt_psd(stats.sigma)

    @staticmethod
    def _make_labels(key, start, batch_size: int, num_classes: int):
        # One key per sample index: labels do not depend on how samples are batched.
        if num_classes == 0:
            return jnp.zeros((batch_size,), jnp.int32)
        sample = lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, num_classes)
        return jax.vmap(sample)(start + jnp.arange(batch_size))

    def _run(self, batches: Iterable[tuple[jax.Array, int]]) -> tuple[np.ndarray, np.ndarray]:
        """Features and logits of (batch, valid rows) pairs, fetched one batch behind."""
        features, logits, pending = [], [], None

        def fetch(item):
            (f, l), n = item
            features.append(_to_host(f)[:n])
            logits.append(_to_host(l)[:n])

        for images, n in batches:
            shape = images.shape
            if len(shape) != 4 or shape[0] != self.batch_size or shape[-1] not in (1, 3):
                raise ValueError(f"expected images (B={self.batch_size}, H, W, 1 or 3) in "
                                 f"[-1, 1], got shape {shape}; check the generate function.")
            current = (self._extract(self._variables, images), n)
            if pending is not None:
                fetch(pending)
            pending = current
        if pending is not None:
            fetch(pending)
        return np.concatenate(features), np.concatenate(logits)

    def features(self, images: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(features, logits) on the host of a stream of host image batches of any size
        (in a run of several processes, each passes the same images)."""
        sharding = parallel.batch_sharding(self.mesh)
        parts = ((np.asarray(x, np.float32),) for x in images)
        return self._run((jax.device_put(batch, sharding), n)
                         for (batch,), n in _rebatch(parts, self.batch_size))

    def real_features(self, batches: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the real images of all processes, in the dataset's order.

        Every process passes its own share, in order, in batches of any size: process p
        of P holds examples p, p + P, p + 2P, ... (`sources.process_share`). Each global
        batch is every process's next rows (zero-padded where a share ends, also where
        shares differ in length), and each row's place in the dataset and its label go
        to the devices and back with it, so every process gets the same rows in the same
        order, whatever the process count. The processes learn that none has rows left
        one batch behind, with the features, so one all-padding batch is extracted and
        dropped at the end.

        Args:
          batches: this process's share: dicts with 'image' float32 (b, H, W, C) in
            [-1, 1] and int 'label' (b,).
        """
        count, index = jax.process_count(), jax.process_index()
        sharding = parallel.batch_sharding(self.mesh)
        local = sum(d.process_index == index for d in self.mesh.devices.flat)
        local_size = self.batch_size * local // self.mesh.devices.size
        parts = ((np.asarray(b["image"], np.float32), np.asarray(b["label"], np.int32))
                 for b in batches)
        shares = _with_more(_rebatch(parts, local_size))
        features, rows, pending, taken, padding = [], [], None, 0, None
        while True:
            item = next(shares, None)
            if item is not None:
                ((images, labels), n), more = item
                if padding is None:
                    padding = np.zeros_like(images), np.zeros_like(labels)
            elif padding is None:
                raise ValueError(f"process {index} has no real images; every process needs "
                                 f"its share of the dataset.")
            else:  # This share has ended: zeros while others still have rows.
                (images, labels), n, more = padding, 0, False
            # Columns: the row's place in the dataset (-1: padding), its label, and
            # whether this process has rows after this batch.
            place = np.where(np.arange(local_size) < n,
                             (taken + np.arange(local_size)) * count + index, -1)
            info = np.stack([place, labels, np.full(local_size, more)], 1).astype(np.int32)
            taken += n
            current = (self._extract(self._variables,
                                     jax.make_array_from_process_local_data(sharding, images))[0],
                       jax.make_array_from_process_local_data(sharding, info))
            if pending is not None:
                features.append(_to_host(pending[0]))
                rows.append(_to_host(pending[1]))
                if not rows[-1][:, 2].any():  # `current` is all padding.
                    break
            pending = current
        rows = np.concatenate(rows)
        order = np.argsort(rows[:, 0], kind="stable")[np.sum(rows[:, 0] < 0):]
        return np.concatenate(features)[order], rows[order, 1]

    def evaluate(self, generate: Callable, num_classes: int, num_samples: int, key: jax.Array,
                 collapse_threshold: float) -> tuple[dict[str, float], ClassDiversity]:
        """Generate `num_samples` images, score them and check them for class-wise collapse.

        Args:
          generate: `generate(key, labels) -> images` float32 (B, H, W, C) in [-1, 1],
            C = 1 or 3, for int32 `labels` (B,) sharded on the batch axis (zeros when
            num_classes == 0), B = `eval.batch_size`.
          num_classes: labels are uniform over [0, num_classes); 0 = unconditional.
          num_samples: images to score (the last batch is trimmed).
          key: PRNG key; the same key gives the same labels and generator keys.
          collapse_threshold: classes whose diversity ratio is below it are collapsed
            (monitor.collapse_threshold).

        Returns:
          (the scores as Python floats: 'IS', 'IS_std', 'FID', 'KID', 'precision',
          'recall', 'density', 'coverage', and where they apply (see the module
          docstring) 'intra_fid' and 'sample_accuracy' with their per-class values
          'intra_fid/<class>' and 'sample_accuracy/<class>'; the class-wise collapse
          check: `ClassDiversity`).
        """
        features, logits, labels = self.generated_features(generate, num_classes, num_samples,
                                                           key)
        return (self.score(features, logits, labels, num_classes),
                self.diversity(features, labels, num_classes, collapse_threshold))

    def generated_features(self, generate: Callable, num_classes: int, num_samples: int,
                           key: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, logits, labels) on the host of `num_samples` generated images (see
        `evaluate`)."""
        gen_key, label_key = jax.random.split(key)
        num_batches = -(-num_samples // self.batch_size)

        all_labels = []

        def batches():
            for i in range(num_batches):
                start = i * self.batch_size
                labels = self._labels(label_key, start, self.batch_size, num_classes)
                n = min(self.batch_size, num_samples - start)
                all_labels.append(_to_host(labels)[:n])
                yield generate(jax.random.fold_in(gen_key, i), labels), n

        features, logits = self._run(batches())
        return features, logits, np.concatenate(all_labels)

    def diversity(self, features: np.ndarray, labels: np.ndarray, num_classes: int,
                  collapse_threshold: float) -> ClassDiversity:
        """Each class's generated diversity over its real diversity (see `evaluate`); all
        samples against all real images for an unconditional G (`num_classes` 0).

        Raises:
          ValueError: a conditional G with more classes than the reference images have.
        """
        ref = self.reference
        if num_classes > len(ref.class_diversity):
            raise ValueError(f"the generator has {num_classes} classes, the reference "
                             f"statistics {len(ref.class_diversity)}; delete the stale "
                             f"statistics in eval.stats_dir.")
        real = ref.class_diversity[:num_classes] if num_classes else np.array([ref.diversity])
        return ClassDiversity.compare(
            reference.class_diversity(features, labels, num_classes, self.kid_seed), real,
            collapse_threshold, conditional=bool(num_classes))

    def score(self, features: np.ndarray, logits: np.ndarray, labels: np.ndarray | None = None,
              num_classes: int = 0) -> dict[str, float]:
        """IS of `logits`; FID, KID, precision, recall, density and coverage of `features`
        against the reference statistics; for a conditional G (`num_classes` > 0, with
        each sample's `labels`) intra-FID and, with the digits net, sample accuracy."""
        is_mean, is_std = scores.inception_score(logits, self.splits)
        mu, sigma = scores.gaussian_stats(features)
        ref = self.reference
        fid = scores.frechet_distance(mu, sigma, ref.mu, ref.sigma, self._sqrt_sigma_ref)
        kid, _ = scores.kernel_inception_distance(features, ref.kid_features, self.kid_subsets,
                                                  self.kid_subset_size, self.kid_seed)
        out = {"IS": is_mean, "IS_std": is_std, "FID": fid, "KID": kid,
               **self.manifold_scores(features).to_scalars()}
        if num_classes:
            out.update(self.intra_fid(features, labels, num_classes))
            if self.feature_net == "digits":
                out.update(conditional.SampleAccuracy.from_predictions(
                    logits, labels, num_classes).to_scalars())
        return out

    def manifold_scores(self, features: np.ndarray) -> manifold.ManifoldMetrics:
        """Precision, recall, density and coverage of `features` against as many real
        features of the reference's pool (see the module docstring)."""
        pool = self.reference.kid_features
        n = min(len(pool), len(features))
        real = pool[np.sort(np.random.RandomState(self.kid_seed).permutation(len(pool))[:n])]
        return manifold.manifold_metrics(real, features[:n], self.nearest_k)

    def intra_fid(self, features: np.ndarray, labels: np.ndarray,
                  num_classes: int) -> dict[str, float]:
        """'intra_fid' and 'intra_fid/<class>' of a conditional G's features; {} (and a
        log line) where the reference keeps no per-class statistics of each of its classes
        (too many to cache, or a class with fewer than 2 real images) or a class has fewer
        than 2 samples."""
        ref = self.reference
        kept = int(np.isfinite(ref.class_mu[:num_classes]).all(axis=1).sum())
        if kept < num_classes:
            logging.info("No intra-FID: the reference statistics keep per-class statistics "
                         "of %d of the generator's %d classes.", kept, num_classes)
            return {}
        fewest = int(np.bincount(labels, minlength=num_classes).min())
        if fewest < 2:
            logging.info("No intra-FID: a class has %d generated samples (2 needed); "
                         "score more samples.", fewest)
            return {}
        return conditional.intra_fid_from_stats(features, labels, ref.class_mu[:num_classes],
                                                ref.class_sigma[:num_classes]).to_scalars()
