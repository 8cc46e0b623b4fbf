"""Shared test set-up: strict numerics so shape bugs fail loudly instead of broadcasting."""

import os
import tempfile

# Tests run on the CPU only, whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

# Eight fake CPU devices, so sharded steps can be compared with single-device ones; tests
# that do not shard run on device 0 as usual.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
# Tests build the same tiny programs many times (each run of a phase jits afresh); a persistent
# compilation cache lets the second build of an identical program skip XLA compilation.
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get(
        "RLHF_JAX_TEST_CACHE", os.path.join(tempfile.gettempdir(), "rlhf_jax_xla_cache")
    ),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from hypothesis import HealthCheck, settings  # noqa: E402

# Deterministic property tests: the same examples on every run and machine. Most examples have
# new shapes and so compile new programs: 12 per test rather than 25 halves that compile time.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=12,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")
