"""Flax FID-Inception + converter against pytorch-fid's and torch-fidelity's networks.

Both references get the SAME random weights: a pytorch-fid network (torchvision's
Inception3 with pytorch-fid's FIDInceptionA/C/E_1/E_2 patches, built without its
download) is randomised, its BatchNorm statistics calibrated on the test images, and its
state dict saved to a .pth. Our converter turns that file into our format; torch-fidelity's
FeatureExtractorInceptionV3 loads the same .pth. No network access, no real weights.
"""
import numpy as np
import pytest

from sagan_jax.evaluation import convert, inception

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")

_TRUNK = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
          "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
          "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]


def _pytorch_fid_network():
    """pytorch-fid's `fid_inception_v3()` minus the weight download."""
    m = pytorch_fid_inception
    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                          init_weights=False)
    net.Mixed_5b = m.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = m.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = m.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = m.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = m.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = m.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = m.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = m.FIDInceptionE_1(1280)
    net.Mixed_7c = m.FIDInceptionE_2(2048)
    return net


def _torch_forward(net, x):
    for name in _TRUNK:
        x = getattr(net, name)(x)
    pool3 = x.mean(dim=(2, 3))
    return pool3, pool3 @ net.fc.weight.T, net.fc(pool3)


def _relerr(got, want):
    return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)  # 32 px "samples"
    images = pixels.astype(np.float32) / 127.5 - 1.0  # our generators' [-1, 1] range
    x299 = np.array(inception.preprocess(images))  # what the graph's first conv sees
    net = _pytorch_fid_network()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                # Positive BN shifts keep most units on (~16% zeros at the end): a random
                # net with many dead units is chaotic and fp32 round-off grows ~2x per
                # block (1.5e-4 at pool3, torch fp32 vs fp64); here it stays ~1e-5.
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(0.5, 1.5)
                mod.reset_running_stats()
                mod.momentum = None  # one train-mode pass sets the running stats to it
        net.fc.bias.uniform_(-1.0, 1.0)
        x_nchw = torch.from_numpy(x299.transpose(0, 3, 1, 2).copy())
        net.train()
        net(x_nchw)
        net.eval()
        expected = _torch_forward(net, x_nchw)
    pth = tmp_path_factory.mktemp("inception") / "random_fid_inception.pth"
    torch.save(net.state_dict(), pth)
    npz = convert.convert(str(pth), str(pth.with_suffix(".npz")), check_hash=False)
    return dict(pixels=pixels, images=images, x299=x299, pth=pth,
                variables=inception.load_variables(npz),
                expected=[t.numpy() for t in expected])


@pytest.mark.slow
def test_network_matches_pytorch_fid(setup):
    out = inception.InceptionV3().apply(setup["variables"], setup["x299"])
    pool3, unbiased, logits = setup["expected"]
    assert out["pool3"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert np.std(pool3) > 1e-2  # the random network is not degenerate
    # Measured: pool3 5.8e-6, logits_unbiased 1.6e-6, logits 1.3e-6 (fp32, CPU).
    assert _relerr(out["pool3"], pool3) <= 1e-4
    assert _relerr(out["logits_unbiased"], unbiased) <= 1e-4
    assert _relerr(out["logits"], logits) <= 1e-4


def test_end_to_end_matches_torch_fidelity(setup):
    tf_inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    extractor = tf_inception.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"],
        feature_extractor_weights_path=str(setup["pth"]))
    with torch.no_grad():  # uint8 in, TF1 resize and (x - 128) / 128 inside, as the graph
        want_pool3, want_logits = extractor(torch.from_numpy(setup["pixels"].transpose(0, 3, 1, 2)))
    pool3, logits = inception.extract(setup["variables"], setup["images"])
    # Measured: pool3 5.8e-6, logits_unbiased 1.6e-6 (resize and normalisation included).
    assert _relerr(pool3, want_pool3.numpy()) <= 1e-4
    assert _relerr(logits, want_logits.numpy()) <= 1e-4


def test_grey_images_are_replicated_to_rgb(setup):
    grey = setup["images"][..., :1]
    a = np.asarray(inception.preprocess(grey))
    b = np.asarray(inception.preprocess(np.repeat(grey, 3, axis=-1)))
    np.testing.assert_array_equal(a, b)


def test_wrong_or_truncated_files_give_one_clear_line(setup, tmp_path):
    bogus = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bogus.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="truncated download.*re-download https://github"):
        convert.convert(str(bogus), str(tmp_path / "out.npz"))
    with pytest.raises(FileNotFoundError, match="download https://github.com/mseitzer"):
        inception.load_variables(str(tmp_path / "missing.npz"))
    good = tmp_path / "good.npz"
    convert.convert(str(setup["pth"]), str(good), check_hash=False)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable converted Inception weight file"):
        inception.load_variables(str(truncated))
    torchvision_sd = torchvision.models.inception_v3(weights=None, init_weights=False).state_dict()
    with pytest.raises(ValueError, match="not the FID Inception state dict"):
        convert.state_dict_to_flat({k: v.numpy() for k, v in torchvision_sd.items()})
