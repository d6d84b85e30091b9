"""Install sagan_jax: `pip install -e .`; `[gpu]` or `[tpu]` for JAX's accelerator build,
`[test,reference]` for the test suite and the implementations it compares against."""
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
        # `tensorflow`, not `tensorflow-cpu`: both distributions install the same
        # `tensorflow` module, and pip, which knows distributions only by name, installs
        # one over the other. Colab and most accelerator images ship `tensorflow`, so that
        # is the name to require. TF only decodes data and writes TensorBoard logs here;
        # the entry points hide the GPUs from it (sagan_jax/startup.py), so its GPU
        # kernels cost only download size.
        "tensorflow>=2.18",
        "tensorboard>=2.18",
        "numpy>=1.26",
        "scipy>=1.13",
        "scikit-learn>=1.5",
        "pillow>=10.0",
        "matplotlib>=3.8",
    ],
    extras_require={
        # JAX's CUDA 12 build, with the CUDA libraries as pip packages (NVIDIA driver
        # >= 525); its version follows the `jax` that pip picks.
        "gpu": ["jax[cuda12]>=0.10"],
        # JAX with libtpu, for Cloud TPU VMs.
        "tpu": ["jax[tpu]>=0.10"],
        # Independent reference implementations that the tests compare against.
        "reference": [
            "torch==2.14.1",
            "torchvision==0.29.1",
            "pytorch-fid>=0.3",
            "torch-fidelity>=0.3",
        ],
        "test": [
            "pytest>=8.0",
            # tests/test_notebook.py runs launch/colab.ipynb headless.
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",
        ],
    },
)
