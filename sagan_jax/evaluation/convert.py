"""Convert pytorch-fid's Inception weights to our format (a flat .npz of Flax variables).

Get the source file, the PyTorch port of TensorFlow's 2015-12-05 Inception graph that
pytorch-fid and torch-fidelity use, from pytorch-fid's GitHub release:

    wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    python -m sagan_jax.evaluation.convert --src=pt_inception-2015-12-05-6726825d.pth

The output goes to `~/.cache/sagan_jax/inception-2015-12-05.npz` unless `--dst` says
otherwise; either path may be in a bucket (`gs://...`). Conversion needs PyTorch (`pip install torch`); using the converted file does
not. The source's SHA-256 must equal `EXPECTED_SHA256`: the first 8 hex digits are the
`6726825d` in the file name (torch.hub's convention) and the full digest is the one that
independent projects pin for this URL (it is also the digest of torch-fidelity's
re-upload `weights-inception-2015-12-05-6726825d.pth`, the same 95,628,359 bytes).

Key mapping: `A.B.conv.weight` (OIHW) -> `params/A/B/conv/kernel` (HWIO);
`.bn.weight/.bn.bias` -> `params/.../bn/scale|bias`; `.bn.running_mean/var` ->
`batch_stats/.../bn/mean|var`; `fc.weight` (1008, 2048) -> `params/fc/kernel` (transposed).
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
from absl import app, flags, logging
from etils import epath
from flax import traverse_util

from sagan_jax import startup
from sagan_jax.evaluation import inception

EXPECTED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
EXPECTED_BYTES = 95_628_359


def sha256_of(path: epath.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with epath.Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_source(path: epath.PathLike) -> str:
    """Return the file's SHA-256 if it is pytorch-fid's weight file; else one clear error."""
    path = epath.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; download {inception.WEIGHTS_URL}.")
    size = path.stat().length
    digest = sha256_of(path)
    if digest != EXPECTED_SHA256:
        hint = "truncated download" if size < EXPECTED_BYTES else "a different file"
        raise ValueError(
            f"{path} ({size:,} bytes, SHA-256 {digest[:12]}...) is not "
            f"pt_inception-2015-12-05-6726825d.pth ({EXPECTED_BYTES:,} bytes, SHA-256 "
            f"{EXPECTED_SHA256[:12]}...), probably a {hint}; re-download {inception.WEIGHTS_URL}.")
    return digest


def _flax_key(torch_key: str) -> tuple[str, str] | None:
    """(collection, 'A/B/leaf') of a state-dict key; None for keys we do not use."""
    *path, leaf = torch_key.split(".")
    if leaf == "num_batches_tracked":
        return None
    if path == ["fc"]:
        return "params", "fc/" + {"weight": "kernel", "bias": "bias"}[leaf]
    table = {("conv", "weight"): ("params", "kernel"), ("bn", "weight"): ("params", "scale"),
             ("bn", "bias"): ("params", "bias"), ("bn", "running_mean"): ("batch_stats", "mean"),
             ("bn", "running_var"): ("batch_stats", "var")}
    collection, name = table[(path[-1], leaf)]
    return collection, "/".join(path + [name])


def state_dict_to_flat(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map a pytorch-fid Inception state dict (numpy arrays) to flat Flax variables.

    Raises:
      ValueError: keys or shapes are not those of the FID Inception network.
    """
    expected = traverse_util.flatten_dict(inception.variable_shapes(), sep="/")
    flat = {}
    for key, value in state_dict.items():
        try:
            target = _flax_key(key)
        except (KeyError, IndexError):
            raise ValueError(f"unexpected tensor {key!r}: not the FID Inception "
                             f"state dict; use {inception.WEIGHTS_URL}.") from None
        if target is None:
            continue
        value = np.asarray(value, np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif key == "fc.weight":
            value = value.T
        flat["/".join(target)] = value
    got = {k: v.shape for k, v in flat.items()}
    want = {k: v.shape for k, v in expected.items()}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise ValueError(f"state dict does not match the FID Inception network "
                         f"(first differences: {diff}); use {inception.WEIGHTS_URL}.")
    return flat


def convert(src: epath.PathLike, dst: epath.PathLike, check_hash: bool = True) -> epath.Path:
    """Convert the .pth at `src` to our .npz at `dst`; returns the expanded `dst`.

    Args:
      src: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.
      dst: output path (parent folders are created).
      check_hash: verify the SHA-256 of `src`; only tests that convert a file saved
        from a randomly initialised reference network turn this off.
    """
    digest = check_source(src) if check_hash else sha256_of(src)
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ImportError("converting the weights needs PyTorch: pip install torch") from None
    with epath.Path(src).open("rb") as f:
        state_dict = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    flat = state_dict_to_flat({k: v.numpy() for k, v in state_dict.items()})
    dst = epath.Path(dst).expanduser()
    dst.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under another name, then renamed: a reader never sees half a file.
    tmp = dst.parent / (dst.name + ".tmp.npz")
    buffer = io.BytesIO()
    np.savez(buffer, source_sha256=np.asarray(digest), **flat)
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(dst)
    return dst


_SRC = flags.DEFINE_string("src", None, "pt_inception-2015-12-05-6726825d.pth to convert.")
_DST = flags.DEFINE_string("dst", inception.DEFAULT_WEIGHTS, "Output .npz path.")


def main(argv):
    del argv
    if not _SRC.value:
        raise app.UsageError(f"--src is required; download {inception.WEIGHTS_URL}.")
    try:
        dst = convert(_SRC.value, _DST.value)
    except (ValueError, FileNotFoundError, ImportError) as e:
        startup.exit_with_error(e)  # No traceback: the message says what to do.
    logging.info("wrote %s", dst)


if __name__ == "__main__":
    app.run(main)
