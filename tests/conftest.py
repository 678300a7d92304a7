"""Test setup: four fake CPU devices, quick codegen and a patient collective timeout (before jax
starts), and one compilation cache per session."""

import os

# Compiling, not running, is most of this suite's time: its programs are tiny. LLVM at -O0 makes
# XLA:CPU compile them about a third faster (a tiny EBOMLC step: 6.1 s -> 3.9 s). The programs
# are the same (that step's optimised HLO is identical); the generated code rounds some float32
# results differently in the last bits, so every comparison here is between runs under the same
# flags or within a tolerance.
# The SIGKILL-and-resume test's run.py processes go without it: they run exactly what users run.
QUICK_CODEGEN = "--xla_backend_optimization_level=0"
# XLA:CPU aborts the process when the fake devices of a pmap do not all reach a collective within
# 40 s (its default); on a 2-core machine shared with other jobs that happened once to the
# four-device tests. A generous limit keeps a slow machine slow instead of killing the worker.
PATIENT_COLLECTIVES = "--xla_cpu_collective_call_terminate_timeout_seconds=600"
os.environ.setdefault(
    "XLA_FLAGS",
    f"--xla_force_host_platform_device_count=4 {QUICK_CODEGEN} {PATIENT_COLLECTIVES}",
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import jax  # noqa: E402  (after XLA_FLAGS)
import jax.experimental.compilation_cache.compilation_cache as compilation_cache  # noqa: E402
import pytest  # noqa: E402

from ebomlc_jax import cpu  # noqa: E402

cpu.set_cpu_flags()  # as the entry points do (tests/test_cpu_xla.py checks that they took effect)


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """One persistent XLA cache per pytest process (each xdist worker has its own), in process
    and, through the environment, for subprocesses (run.py, the benchmarks): a program that
    several tests, runs or seeds compile is compiled once. Keys include the program, flags and
    devices, never results."""
    path = tmp_path_factory.mktemp("xla_cache")
    settings = {
        "jax_compilation_cache_dir": str(path),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    saved = {n: getattr(jax.config, n) for n in settings}
    with pytest.MonkeyPatch.context() as patch:  # restores the environment afterwards
        for name, value in settings.items():
            jax.config.update(name, value)
            patch.setenv(name.upper(), str(value))
        compilation_cache.reset_cache()
        yield path
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
