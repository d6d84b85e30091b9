"""sagan_jax: Self-Attention GAN experiments in JAX and Flax."""
