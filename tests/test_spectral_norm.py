"""Spectral norm against numpy's SVD, `torch.nn.utils.spectral_norm`, and a PyTorch
autograd transcription of the original code's SN."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sagan_jax.models import SN_COLLECTION, power_iteration, spectral_normalize
from sagan_jax.models.layers import SNConv, SNDense, SNEmbed
from sagan_jax.models.spectral_norm import SNSettings, as_matrix

try:
    import torch
except ImportError:  # PyTorch comes with the `reference` extra.
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch (pip install -e .[reference])")
STANDARD, ORIGINAL = SNSettings("standard"), SNSettings("original")


def _top_singular_value(a):
    return np.linalg.svd(np.asarray(a, np.float64), compute_uv=False)[0]


# Each case: our layer, its input, the torch module it mirrors, and how our weights, SN
# vectors and activations (inputs, outputs) map onto torch's layouts.
def _dense_case(settings):
    return dict(
        layer=SNDense(24, sn_settings=settings), x=np.random.default_rng(0).normal(size=(3, 40)),
        torch_module=lambda: torch.nn.Linear(40, 24), weight_name="kernel",
        to_torch=lambda k: k.T, from_torch=lambda w: w.T, v_to_torch=lambda v, k: v,
        act_to_torch=lambda x: x, act_from_torch=lambda y: y,
    )


def _conv_case(settings):
    return dict(
        layer=SNConv(12, 3, sn_settings=settings),
        x=np.random.default_rng(0).normal(size=(2, 6, 5, 8)),
        torch_module=lambda: torch.nn.Conv2d(8, 12, 3, padding=1), weight_name="kernel",
        to_torch=lambda k: k.transpose(3, 2, 0, 1), from_torch=lambda w: w.transpose(2, 3, 1, 0),
        # Our v runs over (kh, kw, in), torch's over (in, kh, kw).
        v_to_torch=lambda v, k: v.reshape(k.shape[:3]).transpose(2, 0, 1).reshape(-1),
        act_to_torch=lambda x: x.transpose(0, 3, 1, 2), act_from_torch=lambda y: y.transpose(0, 2, 3, 1),
    )


def _embed_case(settings):
    """Standard SN: an SN'd nn.Embedding(7, 16). The original's: SNLinear(7, 16) of the
    one-hot label, whose weight (16, 7) is the table's transpose."""
    if settings.mode == "original":
        to_torch, out_axis = (lambda t: t.T), -1
    else:
        to_torch, out_axis = (lambda t: t), 0
    return dict(
        layer=SNEmbed(7, 16, sn_settings=settings), x=np.array([0, 3, 6, 3, 1]),
        torch_module=lambda: torch.nn.Embedding(7, 16), weight_name="embedding", out_axis=out_axis,
        to_torch=to_torch, from_torch=to_torch, v_to_torch=lambda v, k: v,
        act_to_torch=lambda x: x, act_from_torch=lambda y: y,
    )


CASES = {"dense": _dense_case, "conv": _conv_case, "embed": _embed_case}


def _torch_input(case):
    x = case["act_to_torch"](case["x"])
    return torch.tensor(x) if x.dtype.kind == "i" else torch.tensor(x, dtype=torch.float64)


def _jax_input(case):
    x = case["x"]
    return jnp.asarray(x) if x.dtype.kind == "i" else jnp.asarray(x, jnp.float32)


def _loss_and_grads(layer, variables, x, cotangent, train):
    """Our output, d<out, cotangent>/dweight and the new SN state of one pass."""
    def loss(params):
        out, state = layer.apply({**variables, "params": params}, x, train=train, mutable=[SN_COLLECTION])
        return jnp.sum(out * cotangent), (out, state[SN_COLLECTION])

    (_, (out, state)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    return out, grads, state


@pytest.mark.parametrize("shape", [(64, 32), (20, 50), (3, 3, 16, 24), (1, 1, 32, 8)])
def test_power_iteration_converges_to_svd(shape):
    a = as_matrix(jax.random.normal(jax.random.key(0), shape))
    u, v = power_iteration(a, jax.random.normal(jax.random.key(1), (a.shape[0],)), n_iters=300)
    ref = _top_singular_value(a)
    assert abs(float(u @ a @ v) - ref) / ref < 1e-3


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_steps_normalize_the_weight(name):
    """Standard SN: 300 training passes, then eval divides by the top singular value."""
    case = CASES[name](STANDARD)
    layer, x = case["layer"], _jax_input(case)
    variables = layer.init({"params": jax.random.key(0)}, x)
    weight = variables["params"][case["weight_name"]]
    apply = jax.jit(lambda v: layer.apply(v, x, train=True, mutable=[SN_COLLECTION])[1])
    for _ in range(300):
        variables = {**variables, **apply(variables)}
    out_axis = case.get("out_axis", -1)
    w_sn, _, sigma = spectral_normalize(weight, variables[SN_COLLECTION], update=False, out_axis=out_axis)
    ref = _top_singular_value(as_matrix(weight, out_axis))
    assert abs(float(sigma) - ref) / ref < 1e-3
    assert abs(_top_singular_value(as_matrix(w_sn, out_axis)) - 1.0) < 1e-3


@needs_torch
@pytest.mark.parametrize("name,n_iters", [("dense", 1), ("dense", 3), ("conv", 1), ("embed", 1)])
def test_standard_mode_equals_torch_spectral_norm(name, n_iters):
    """Same weights, same u and v: outputs, sigma, u, v and weight gradients equal torch's
    over three training passes, then in eval (stored u, v, no iteration)."""
    case = CASES[name](SNSettings("standard", n_iters))
    layer, x, x_t = case["layer"], _jax_input(case), _torch_input(case)
    variables = layer.init({"params": jax.random.key(0)}, x)
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    weight = params[case["weight_name"]]
    module = torch.nn.utils.spectral_norm(case["torch_module"]().double(), n_power_iterations=n_iters)
    with torch.no_grad():
        module.weight_orig.copy_(torch.tensor(case["to_torch"](weight)))
        if "bias" in params:
            module.bias.copy_(torch.tensor(params["bias"]).double() + 0.25)
            params["bias"] = params["bias"] + np.float32(0.25)
        module.weight_u.copy_(torch.tensor(np.asarray(variables[SN_COLLECTION]["u"])))
        module.weight_v.copy_(torch.tensor(case["v_to_torch"](np.asarray(variables[SN_COLLECTION]["v"]), weight)))
    variables = {"params": params, SN_COLLECTION: variables[SN_COLLECTION]}
    rng = np.random.default_rng(1)
    for train in (True, True, True, False):
        module.train(train)
        out_t = module(x_t)
        cot = rng.normal(size=out_t.shape)
        module.zero_grad()
        (out_t * torch.tensor(cot)).sum().backward()
        out, grads, state = _loss_and_grads(
            layer, variables, x, jnp.asarray(case["act_from_torch"](cot), jnp.float32), train)
        variables = {**variables, SN_COLLECTION: state}
        u_t, v_t = module.weight_u.numpy(), module.weight_v.numpy()
        np.testing.assert_allclose(state["u"], u_t, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(case["v_to_torch"](np.asarray(state["v"]), weight), v_t, rtol=1e-5, atol=1e-6)
        w_mat = module.weight_orig.detach().reshape(module.weight_orig.shape[0], -1).numpy()
        _, _, sigma = spectral_normalize(weight, state, update=False, out_axis=case.get("out_axis", -1))
        np.testing.assert_allclose(float(sigma), u_t @ w_mat @ v_t, rtol=1e-5)
        np.testing.assert_allclose(out, case["act_from_torch"](out_t.detach().numpy()), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            grads[case["weight_name"]], case["from_torch"](module.weight_orig.grad.numpy()), rtol=1e-4, atol=1e-5)


def _torch_original_layer(name, weight, x, u0, through_power_step=True):
    """The original layer in PyTorch: its SN (a port of TF-Hub's BigGAN), then the op.

    `through_power_step=False` holds u and v constant instead, to show that it matters.
    """
    def l2normalize(t, eps=1e-8):
        return t / (t.norm() + eps)

    w = weight.view(weight.shape[0], -1)
    with torch.set_grad_enabled(through_power_step):
        v = l2normalize(torch.mv(w.t(), u0))
        u = l2normalize(torch.mv(w, v))
    w_sn = weight / u.dot(w.mv(v))
    if name == "dense":
        return torch.nn.functional.linear(x, w_sn)
    if name == "conv":
        return torch.nn.functional.conv2d(x, w_sn, padding=1)
    one_hot = torch.nn.functional.one_hot(x.long(), weight.shape[1]).to(w_sn.dtype)
    return torch.nn.functional.linear(one_hot, w_sn)


def _torch_grads(name, weight, x, u0, cot, through_power_step=True):
    weight = torch.tensor(np.ascontiguousarray(weight), dtype=torch.float64, requires_grad=True)
    inputs = [weight] + ([x.requires_grad_(True)] if x.is_floating_point() else [])
    out = _torch_original_layer(name, weight, x, torch.tensor(u0, dtype=torch.float64), through_power_step)
    grads = torch.autograd.grad((out * torch.tensor(cot)).sum(), inputs)
    return out.detach().numpy(), [g.numpy() for g in grads]


@needs_torch
@pytest.mark.parametrize("name", sorted(CASES))
def test_original_mode_equals_the_original_layer(name):
    """Value and gradients (weight and input) equal the PyTorch transcription in several
    training passes, and eval gives the same; u0 is never written."""
    case = CASES[name](ORIGINAL)
    layer, x = case["layer"], _jax_input(case)
    variables = layer.init({"params": jax.random.key(0)}, x)
    u0 = np.asarray(variables[SN_COLLECTION]["u"])
    weight_t = case["to_torch"](np.asarray(variables["params"][case["weight_name"]], np.float64))
    x_t = _torch_input(case)
    cot_ours = jnp.asarray(np.random.default_rng(1).normal(size=layer.apply(variables, x).shape), jnp.float32)
    cot = case["act_to_torch"](np.asarray(cot_ours, np.float64))
    out_t, grads_t = _torch_grads(name, weight_t, x_t, u0, cot)

    def objective(params, x):
        out, state = layer.apply({**variables, "params": params}, x, train=True, mutable=[SN_COLLECTION])
        return jnp.sum(out * cot_ours), (out, state[SN_COLLECTION])

    differentiable_x = name != "embed"
    for _ in range(3):
        (_, (out, state)), grads = jax.value_and_grad(
            objective, (0, 1) if differentiable_x else 0, has_aux=True)(variables["params"], x)
        grad_params = grads[0] if differentiable_x else grads
        variables = {**variables, SN_COLLECTION: state}
        np.testing.assert_array_equal(state["u"], u0)  # bit-unchanged
        np.testing.assert_allclose(out, case["act_from_torch"](out_t), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            grad_params[case["weight_name"]], case["from_torch"](grads_t[0]), rtol=1e-4, atol=1e-5)
        if differentiable_x:
            np.testing.assert_allclose(grads[1], case["act_from_torch"](grads_t[1]), rtol=1e-4, atol=1e-5)
    train_out, _ = layer.apply(variables, x, train=True, mutable=[SN_COLLECTION])
    np.testing.assert_array_equal(layer.apply(variables, x, train=False), train_out)
    # The reference can tell: holding u and v constant gives another weight gradient.
    _, grads_const = _torch_grads(name, weight_t, x_t, u0, cot, through_power_step=False)
    assert np.abs(grads_const[0] - grads_t[0]).max() > 1e-3 * np.abs(grads_t[0]).max()


@pytest.mark.parametrize("settings", [STANDARD, ORIGINAL], ids=["standard", "original"])
def test_initialisation_does_not_advance_the_state(settings):
    layer, x = SNDense(8, sn_settings=settings), jnp.ones((2, 5))
    at_rest = layer.init({"params": jax.random.key(0)}, x)[SN_COLLECTION]
    training = layer.init({"params": jax.random.key(0)}, x, train=True)[SN_COLLECTION]
    assert set(at_rest) == ({"u", "v"} if settings is STANDARD else {"u"})
    for key in at_rest:
        np.testing.assert_array_equal(at_rest[key], training[key])
        np.testing.assert_allclose(np.linalg.norm(at_rest[key]), 1.0, rtol=1e-6)


def test_sn_state_is_its_own_collection():
    variables = SNConv(4, 3).init({"params": jax.random.key(0)}, jnp.ones((1, 4, 4, 2)))
    assert set(variables) == {"params", SN_COLLECTION}
    assert variables[SN_COLLECTION]["u"].shape == (4,) and variables[SN_COLLECTION]["v"].shape == (18,)
    assert set(variables["params"]) == {"kernel", "bias"}


def test_settings_reject_what_they_cannot_do():
    with pytest.raises(ValueError, match="sn_mode"):
        SNSettings("clipped")
    with pytest.raises(ValueError, match="sn_iters=1"):
        SNSettings("original", n_iters=2)
