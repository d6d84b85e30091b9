"""The class-wise collapse check in D's features (runs without a feature network)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import pdist

from configs import digits
from sagan_jax import gan as gan_lib, parallel, train_step
from sagan_jax.evaluation import d_diversity, digits_net


@pytest.mark.slow
def test_names_exactly_the_classes_that_ignore_z():
    """A D at init on the real digits: a "G" that returns random real scans except for
    classes 1 and 8 (always the same scan) has those two, and only those, flagged; the
    real side matches scipy's mean pairwise distance of D's features."""
    config = digits.get_config("test")
    gan = gan_lib.build(config, 10, 1)
    state = train_step.create_train_state(gan, config, jax.random.key(0))
    variables = {"params": state.d_params, **state.d_state}
    images, labels = digits_net.real_digits()
    images = images.repeat(2, axis=1).repeat(2, axis=2)  # 16 px
    mesh = parallel.create_mesh()
    probe = d_diversity.DFeatureDiversity(
        gan, mesh, ({"image": images[i:i + 100], "label": labels[i:i + 100]}
                    for i in range(0, len(images), 100)))
    by_class = jnp.asarray(np.stack([images[labels == c][:150] for c in range(10)]))
    collapsed = jnp.asarray([c in (1, 8) for c in range(10)])

    def generate(key, y):
        index = jax.random.randint(key, y.shape, 0, 150)
        return by_class[y, jnp.where(collapsed[y], 0, index)]

    got = probe.check(variables, generate, jax.random.key(1), 0.6)
    ratios = got.ratios
    assert got.collapsed_classes == ["1", "8"] and got.threshold == 0.6
    assert ratios[[1, 8]].max() < 1e-6 and np.delete(ratios, [1, 8]).min() > 0.7
    assert got.minimum == ratios.min()

    # Independent recomputation: D's features of the same images, scipy's pdist.
    def class_means(x, y):
        _, out = gan.discriminator.apply(variables, jnp.asarray(x), jnp.asarray(y),
                                         mutable=["intermediates"])
        feats = np.asarray(out["intermediates"]["features"][0], np.float64)
        return np.asarray([pdist(feats[np.asarray(y) == c]).mean() for c in range(10)])

    fake_labels = np.repeat(np.arange(10, dtype=np.int32), d_diversity.PER_CLASS)
    fake = generate(jax.random.key(1), jnp.asarray(fake_labels))
    want = class_means(fake, fake_labels) / class_means(probe.real, probe.real_labels)
    np.testing.assert_allclose(ratios, want, rtol=1e-4, atol=1e-6)
    assert np.bincount(probe.real_labels).tolist() == [d_diversity.PER_CLASS] * 10
