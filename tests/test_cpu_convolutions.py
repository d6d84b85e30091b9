"""`train.cpu_convolutions`: the step's XLA:CPU convolutions through YNNPACK or Eigen."""
import logging

import jax
import numpy as np
import pytest

from configs import common
from sagan_jax import gan as gan_lib, parallel, train_step

NUM_CLASSES, CHANNELS, BATCH = 10, 1, 8
MESH = parallel.create_mesh(jax.devices()[:1])


def _config(choice):
    cfg = common.get_base_config()
    cfg.model.resolution, cfg.model.width, cfg.model.z_dim = 16, 1 / 16, 16
    cfg.model.g_attention = cfg.model.d_attention = ()
    cfg.train.batch_size = BATCH
    cfg.train.cpu_convolutions = choice
    return cfg


def test_eigen_turns_ynnpack_off_on_cpu():
    assert train_step.compiler_options(_config("default"), MESH) is None
    assert train_step.compiler_options(_config("eigen"), MESH) == {
        "xla_cpu_experimental_ynn_fusion_type": ""}


def test_unknown_choice_is_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown train.cpu_convolutions 'ynn'; set it to "
                                         r"one of \['default', 'eigen'\]"):
        train_step.compiler_options(_config("ynn"), MESH)


def test_jaxlib_without_the_option_warns_and_keeps_xla_defaults(monkeypatch, caplog):
    monkeypatch.setattr(train_step, "_YNNPACK_FUSIONS", "xla_cpu_no_such_option")
    with caplog.at_level(logging.WARNING):
        assert train_step.compiler_options(_config("eigen"), MESH) is None
    assert "has no XLA option xla_cpu_no_such_option" in caplog.text


def test_eigen_step_computes_the_same_step_without_ynnpack():
    """Both choices compile the step the trainer runs; only the convolutions' library
    differs: YNNPACK fusions in one program and none in the other, the same losses."""
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (1, BATCH, 16, 16, CHANNELS)).astype(np.float32),
             "label": (np.arange(BATCH, dtype=np.int32) % NUM_CLASSES)[None]}
    results = {}
    for choice in ("default", "eigen"):
        cfg = _config(choice)
        gan = gan_lib.build(cfg, NUM_CLASSES, CHANNELS)
        state = jax.device_put(train_step.create_train_state(gan, cfg, jax.random.key(0)),
                               parallel.replicated_sharding(MESH))
        args = (state, jax.device_put(batch, parallel.stacked_batch_sharding(MESH)),
                jax.random.key(1), np.int32(1))
        step = train_step.make_train_step(gan, cfg, MESH, steps_per_epoch=100)
        compiled = step.lower(*args).compile()
        _, metrics = compiled(*args)
        results[choice] = compiled.as_text().count("__ynn_fusion"), jax.device_get(metrics)
    assert results["default"][0] > 0
    assert results["eigen"][0] == 0
    for name in ("d_loss", "g_loss", "d_real", "d_fake"):
        np.testing.assert_allclose(results["eigen"][1][name], results["default"][1][name],
                                   rtol=1e-4, err_msg=name)
