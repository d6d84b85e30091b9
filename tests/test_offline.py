"""Offline, a TFDS dataset that is not prepared stops in seconds with one line, instead of
TFDS's minutes of download retries; a prepared one needs no connection."""
import dataclasses
import importlib
import time
import types

import pytest
import tensorflow_datasets as tfds
from etils import epath

from sagan_jax.data import tfds_datasets

UNRESOLVABLE = "sagan-jax-test.invalid"  # .invalid never resolves (RFC 2606).
SERVER = f"https://{UNRESOLVABLE}"


def cifar10_data(data_dir):
    config = importlib.import_module("configs.cifar10").get_config("test")
    config.data.data_dir = str(data_dir)
    return config.data


def test_an_unreachable_download_host_stops_at_once_with_one_line(tmp_path):
    spec = dataclasses.replace(tfds_datasets.TFDS_DATASETS["cifar10"], server=SERVER)
    start = time.monotonic()
    with pytest.raises(ConnectionError) as e:
        tfds_datasets._prepare(  # pylint: disable=protected-access
            "cifar10", spec, cifar10_data(tmp_path), tfds)
    elapsed = time.monotonic() - start
    message = str(e.value)
    assert elapsed < 20, f"took {elapsed:.1f} s"
    assert "\n" not in message
    assert message.startswith(f"TFDS cannot download 'cifar10' (no connection to "
                              f"{UNRESOLVABLE}:443: ")
    assert message.endswith("or put cifar-10-binary.tar.gz in a folder and set "
                            "--config.data.manual_dir to it.")
    assert list(tmp_path.iterdir()) == []  # Nothing was started.


def test_a_proxy_is_what_is_tried_when_one_is_set(monkeypatch):
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "no_proxy",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert tfds_datasets.unreachable(f"http://{UNRESOLVABLE}").startswith(
        f"no connection to {UNRESOLVABLE}:80: ")
    monkeypatch.setenv("https_proxy", f"http://proxy.{UNRESOLVABLE}:3128")
    assert tfds_datasets.unreachable("https://www.cs.toronto.edu").startswith(
        f"no connection to proxy.{UNRESOLVABLE}:3128: ")
    monkeypatch.setenv("no_proxy", UNRESOLVABLE)  # Bypassed: the server itself.
    assert tfds_datasets.unreachable(SERVER).startswith(f"no connection to {UNRESOLVABLE}:443: ")


class Builder:
    """A TFDS builder whose data_dir is prepared when it holds dataset_info.json."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.data_path = epath.Path(data_dir)
        self.prepared = False

    def download_and_prepare(self, download_config):
        self.prepared = True


def fake_tfds():
    return types.SimpleNamespace(
        builder=lambda name, data_dir: Builder(data_dir),
        download=types.SimpleNamespace(DownloadConfig=lambda manual_dir: None))


def never(server):
    raise AssertionError(f"tried to reach {server}")


def test_prepared_data_or_the_source_files_need_no_connection(tmp_path):
    spec = dataclasses.replace(tfds_datasets.TFDS_DATASETS["cifar10"], server=SERVER)
    (tmp_path / "dataset_info.json").write_text("{}")
    builder = tfds_datasets._prepare(  # pylint: disable=protected-access
        "cifar10", spec, cifar10_data(tmp_path), fake_tfds(), why_unreachable=never)
    assert builder.prepared
    data = cifar10_data(tmp_path / "empty")
    data.manual_dir = str(tmp_path / "manual")
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "cifar-10-binary.tar.gz").write_bytes(b"")
    assert tfds_datasets._prepare(  # pylint: disable=protected-access
        "cifar10", spec, data, fake_tfds(), why_unreachable=never).prepared
