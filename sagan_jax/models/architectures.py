"""Per-resolution architecture tables (BigGAN-PyTorch style: architecture as data).

The 32, 48 and 96 px tables are those of the original system (docs/original.md); 128 px
is the ImageNet-128 setting of the SAGAN paper (BigGAN-style channel multipliers of 64,
attention at 32x32 in G and D); 16 px is a small table of our own for the offline
digits quick start. Channel counts are at width 1.0.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One resolution's networks.

    Attributes:
      resolution: output image size of G / input size of D.
      g_base: spatial size of G's first feature map (after the dense layer).
      g_base_channels: channels of that feature map.
      g_blocks: output channels of G's up-sampling blocks (each doubles the size).
      g_attention: default attention resolutions of G.
      g_out_sn: whether G's final 3x3 conv is SN'd (the original left it plain at 48 and
        96 px).
      d_blocks: (output channels, downsample) of D's blocks; the first is the
        optimized block.
      d_attention: default attention resolutions of D.
      d_out_sn: whether D's final dense layer is SN'd (plain at 96 px in the original).
    """

    resolution: int
    g_base: int
    g_base_channels: int
    g_blocks: tuple[int, ...]
    g_attention: tuple[int, ...]
    g_out_sn: bool
    d_blocks: tuple[tuple[int, bool], ...]
    d_attention: tuple[int, ...]
    d_out_sn: bool


ARCHITECTURES = {
    16: Architecture(
        resolution=16, g_base=4, g_base_channels=256, g_blocks=(256, 128),
        g_attention=(8,), g_out_sn=True,
        d_blocks=((128, True), (128, True), (128, False)), d_attention=(8,), d_out_sn=True,
    ),
    32: Architecture(
        resolution=32, g_base=4, g_base_channels=256, g_blocks=(256, 256, 256),
        g_attention=(8,), g_out_sn=True,
        d_blocks=((128, True), (128, True), (128, False), (128, False)),
        d_attention=(8,), d_out_sn=True,
    ),
    48: Architecture(
        resolution=48, g_base=6, g_base_channels=512, g_blocks=(256, 128, 64),
        g_attention=(12,), g_out_sn=False,
        d_blocks=((64, True), (128, True), (256, True), (512, True), (1024, False)),
        d_attention=(12,), d_out_sn=True,
    ),
    96: Architecture(
        resolution=96, g_base=3, g_base_channels=1024, g_blocks=(1024, 512, 256, 128, 64),
        g_attention=(24,), g_out_sn=False,
        d_blocks=((64, True), (128, True), (256, True), (512, True), (1024, True),
                  (1024, False)),
        d_attention=(24,), d_out_sn=False,
    ),
    128: Architecture(
        resolution=128, g_base=4, g_base_channels=1024, g_blocks=(1024, 512, 256, 128, 64),
        g_attention=(32,), g_out_sn=True,
        d_blocks=((64, True), (128, True), (256, True), (512, True), (1024, True),
                  (1024, False)),
        d_attention=(32,), d_out_sn=True,
    ),
}


def get_architecture(resolution: int) -> Architecture:
    """The table for `resolution`, or one clear error naming the known ones."""
    if resolution not in ARCHITECTURES:
        raise ValueError(
            f"no architecture for resolution {resolution}; "
            f"set model.resolution to one of {sorted(ARCHITECTURES)}."
        )
    return ARCHITECTURES[resolution]


def scale_channels(channels: int, width: float) -> int:
    """Channels at width multiplier `width`, at least 8 so attention keeps C/8 >= 1."""
    return max(8, int(round(channels * width)))
