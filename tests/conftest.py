"""Shared test set-up: strict numerics so shape bugs fail loudly instead of broadcasting."""

import os

# Tests run on the CPU only, whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

# Eight fake CPU devices, so sharded steps can be compared with single-device ones; tests
# that do not shard run on device 0 as usual.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")

from hypothesis import HealthCheck, settings  # noqa: E402

# Deterministic property tests: the same examples on every run and machine.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=25,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")
