"""One compilation per architecture for the tests that run the whole driver.

Compiling a GAN step takes tens of seconds on a 2-core CPU, and these tests start many
runs of the same few architectures. `PROGRAMS`, passed as `programs=` to
`train.train_and_evaluate`, `score.evaluate_workdir` and `render.render`, hands every
run of one architecture the same compiled step and generator, and copies of the same
initial state (the step donates its input): the same programs for every run, so runs
stay bit-comparable. `programs_built()` checks that a block builds and compiles none of
them again, so that a change that loses the sharing fails a test instead of silently
slowing the suite down.
"""
import contextlib
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from sagan_jax import programs

# XLA's compilation event (jax._src.dispatch.BACKEND_COMPILE_EVENT), with the function's name.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _gan_key(gan):
    """The GAN's identity (its optimizers' repr names function addresses, so not that)."""
    return repr((gan.generator, gan.discriminator, gan.g_lr, gan.d_lr, gan.num_classes))


def _architecture_key(gan, config):
    """What the compiled programs depend on: the GAN and the step's config, not the run
    length, logging or checkpoints."""
    shaping = {k: config[k].to_dict() for k in ("model", "optim", "update_rule")}
    shaping["train"] = {k: v for k, v in config.train.to_dict().items()
                        if k not in ("num_steps", "num_epochs")}
    return _gan_key(gan), json.dumps(shaping, sort_keys=True, default=str)


def _devices(mesh):
    return tuple(d.id for d in mesh.devices.flat)


class CachingPrograms(programs.Programs):
    """`Programs` that builds each program once per architecture and hands out that one.

    Attributes:
      builds: how many programs it has built.
      names: the names under which XLA compiled them (`jit(<function>)`: the longest
        compilation while each was built or first called).
    """

    def __init__(self):
        self._cache = {}
        self.builds = 0
        self.names = set()

    def _get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
            self.builds += 1
        return self._cache[key]

    def _record(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)`, noting the name of its longest compilation."""
        with compiled_names() as names:
            out = fn(*args, **kwargs)
        if names:
            self.names.add(max(names, key=names.get))
        return out

    def _named_on_first_call(self, fn):
        calls = []

        @functools.wraps(fn)
        def wrapper(*args):
            calls.append(None)
            return self._record(fn, *args) if len(calls) == 1 else fn(*args)
        return wrapper

    def train_state(self, gan, config, key):
        make = functools.partial(self._record, super().train_state, gan, config, key)
        cache_key = ("train_state", *_architecture_key(gan, config),
                     str(np.asarray(jax.random.key_data(key)).tolist()))
        return jax.tree.map(jnp.copy, self._get(cache_key, make))

    def train_step(self, gan, config, mesh, **kwargs):
        make = functools.partial(super().train_step, gan, config, mesh, **kwargs)
        cache_key = ("train_step", *_architecture_key(gan, config), _devices(mesh),
                     str(sorted(kwargs.items())))
        return self._get(cache_key, lambda: self._named_on_first_call(make()))

    def generate_fn(self, gan, mesh):
        make = functools.partial(super().generate_fn, gan, mesh)
        cache_key = ("generate_fn", _gan_key(gan), _devices(mesh))
        return self._get(cache_key, lambda: self._named_on_first_call(make()))


@contextlib.contextmanager
def compiled_names():
    """Yields a dict that receives the name of every program XLA compiles in the block,
    with the longest time (s) it took."""
    names = {}

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            name = kwargs.get("fun_name")
            names[name] = max(duration, names.get(name, 0.0))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


PROGRAMS = CachingPrograms()


@contextlib.contextmanager
def programs_built(expected=0):
    """Fails unless the block builds `expected` new programs through `PROGRAMS` and
    compiles none of the programs it has built (a caller that bypassed `PROGRAMS` would
    compile them again)."""
    before = PROGRAMS.builds
    with compiled_names() as names:
        yield
    assert PROGRAMS.builds - before == expected, (PROGRAMS.builds - before, expected)
    assert PROGRAMS.names, "no program of PROGRAMS has been compiled yet"
    again = set(names) & PROGRAMS.names
    assert not again, f"compiled again: {sorted(again)}"
