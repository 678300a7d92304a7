"""ebomlc_jax: EBOMLC, MLC-D, MLC and baselines for noisy-label learning in JAX/Flax."""
