"""Datasets: sources (`sources` and its registry) decoded once into memory or streamed
batch by batch with grain (`streaming`), as `data.pipeline` chooses; batched and sharded
over the data mesh (`pipeline`).

    ds = data.create_dataset(config.data, config.train.batch_size, config.train.seed, mesh)
    dispatches = ds.plan_iterator(periods.chunks(start_step, k), k)  # (first, count, batches)

Importing this package registers the built-in sources: `digits`, the TFDS datasets
(`cifar10`, `stl10`, `oxford_flowers102`, `imagenet2012`) and the class-per-folder
trees (`animeface`, `image_folder`).
"""
from sagan_jax.data import digits, tfds_datasets, image_folder  # noqa: F401,I001 -- registration order.
from sagan_jax.data.pipeline import Dataset, create_dataset, to_float
from sagan_jax.data.sources import Examples, names, register

__all__ = ["Dataset", "Examples", "create_dataset", "names", "register", "to_float"]
