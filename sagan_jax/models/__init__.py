"""The SAGAN networks: spectral norm, layers, architecture tables, G and D.

Imports nothing from TensorFlow, so models run on machines without it.
"""
from sagan_jax.models.architectures import ARCHITECTURES, Architecture, get_architecture
from sagan_jax.models.networks import Discriminator, Generator, build_models
from sagan_jax.models.spectral_norm import SN_COLLECTION, power_iteration, spectral_normalize

__all__ = [
    "ARCHITECTURES", "Architecture", "Discriminator", "Generator", "SN_COLLECTION",
    "build_models", "get_architecture", "power_iteration", "spectral_normalize",
]
