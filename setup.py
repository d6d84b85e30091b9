"""Install sagan_jax: `pip install -e .` (add `[test]` for the test suite)."""
from setuptools import find_packages, setup

setup(
    name="sagan_jax",
    version="0.1.0",
    description="Self-Attention GAN experiments (SAGAN / SNGAN) in JAX and Flax.",
    python_requires=">=3.11",
    packages=find_packages(include=["sagan_jax", "sagan_jax.*"]),
    package_data={"sagan_jax": ["evaluation/assets/*"]},
    install_requires=[
        "jax>=0.10",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml-collections>=1.0",
        "clu>=0.0.12",
        "tensorflow-datasets>=4.9.6",
        # TFDS's download_and_prepare imports it (through etils) but does not require it.
        "importlib_resources>=6.0",
        "tensorflow-cpu>=2.18",
        "tensorboard>=2.18",
        "numpy>=1.26",
        "scipy>=1.13",
        "scikit-learn>=1.5",
        "pillow>=10.0",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Independent reference implementations that the tests compare against.
        "reference": [
            "torch==2.14.1",
            "torchvision==0.29.1",
            "pytorch-fid>=0.3",
            "torch-fidelity>=0.3",
        ],
        "test": [
            "pytest>=8.0",
        ],
    },
)
