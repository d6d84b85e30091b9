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


def _architecture_key(name, config, num_classes, channels, extra):
    """What the compiled function depends on: not the run length, logging or checkpoints."""
    shaping = {k: config[k].to_dict() for k in ("model", "optim", "schedule")}
    shaping["train"] = {k: v for k, v in config.train.to_dict().items() if k != "num_steps"}
    return (name, json.dumps(shaping, sort_keys=True, default=str), num_classes, channels,
            str(extra))


def _memoized(name, make):
    def wrapper(config, num_classes, channels, last, **kwargs):
        if name == "create_train_state":
            key = _architecture_key(name, config, num_classes, channels,
                                    np.asarray(jax.random.key_data(last)).tolist())
            if key not in _CACHE:
                _CACHE[key] = make(config, num_classes, channels, last, **kwargs)
            return jax.tree.map(jnp.copy, _CACHE[key])
        key = _architecture_key(name, config, num_classes, channels,
                                [d.id for d in last.devices.flat])
        if key not in _CACHE:
            _CACHE[key] = make(config, num_classes, channels, last, **kwargs)
        return _CACHE[key]
    return wrapper


@pytest.fixture(scope="module", autouse=True)
def compile_once():
    with pytest.MonkeyPatch.context() as mp:
        for name in ("make_train_step", "make_generate_fn", "create_train_state"):
            mp.setattr(train_step, name, _memoized(name, getattr(train_step, name)))
        yield
