"""Test setup: four fake CPU devices for the data-parallel tests (must precede jax's start)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import jax  # noqa: E402  (after XLA_FLAGS)
import jax.experimental.compilation_cache.compilation_cache as compilation_cache  # noqa: E402
import pytest  # noqa: E402

from ebomlc_jax import xla_cpu  # noqa: E402

xla_cpu.set_cpu_flags()  # as run.py does (tests/test_xla_cpu.py checks that they took effect)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache for one module (in process and for run.py subprocesses, through
    the environment): modules that compile the same programs many times pay each compile once."""
    path = tmp_path_factory.mktemp("xla_cache")
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield path
    for n, v in saved.items():
        jax.config.update(n, v)
    compilation_cache.reset_cache()
