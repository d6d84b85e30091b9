"""One compilation per architecture for the tests that run the whole driver.

Compiling a GAN step takes tens of seconds on a 2-core CPU, and these tests start many
runs of the same few architectures. `compile_once` (import it into a test module) hands
every run of one architecture the same compiled step and generator, and copies of the
same initial state (the step donates its input): the same programs for every run, so
runs stay bit-comparable.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax import train_step

_CACHE = {}


def _gan_key(gan):
    """The GAN's identity (its optimizers' repr names function addresses, so not that)."""
    return repr((gan.generator, gan.discriminator, gan.g_lr, gan.d_lr, gan.num_classes))


def _architecture_key(name, gan, config, extra):
    """What the compiled function depends on: the GAN and the step's config, not the run
    length, logging or checkpoints."""
    shaping = {k: config[k].to_dict() for k in ("model", "optim", "update_rule")}
    shaping["train"] = {k: v for k, v in config.train.to_dict().items()
                        if k not in ("num_steps", "num_epochs")}
    return (name, _gan_key(gan), json.dumps(shaping, sort_keys=True, default=str), str(extra))


def _memoized(name, make):
    def create_train_state(gan, config, key):
        cache_key = _architecture_key(name, gan, config,
                                      np.asarray(jax.random.key_data(key)).tolist())
        if cache_key not in _CACHE:
            _CACHE[cache_key] = make(gan, config, key)
        return jax.tree.map(jnp.copy, _CACHE[cache_key])

    def make_train_step(gan, config, mesh, **kwargs):
        cache_key = _architecture_key(name, gan, config,
                                      ([d.id for d in mesh.devices.flat], sorted(kwargs.items())))
        if cache_key not in _CACHE:
            _CACHE[cache_key] = make(gan, config, mesh, **kwargs)
        return _CACHE[cache_key]

    def make_generate_fn(gan, mesh):
        cache_key = (name, _gan_key(gan), str([d.id for d in mesh.devices.flat]))
        if cache_key not in _CACHE:
            _CACHE[cache_key] = make(gan, mesh)
        return _CACHE[cache_key]

    return locals()[name]


@pytest.fixture(scope="module", autouse=True)
def compile_once():
    with pytest.MonkeyPatch.context() as mp:
        for name in ("make_train_step", "make_generate_fn", "create_train_state"):
            mp.setattr(train_step, name, _memoized(name, getattr(train_step, name)))
        yield
