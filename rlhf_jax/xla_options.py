"""Per-program XLA compiler options for the training steps, by backend.

On CPU, XLA lowers each matrix product to a YNNPACK fusion (``ynn_fusion`` in a profile) by
default and also pulls neighbouring elementwise work into those fusions, which forces layout
copies around them: the backward of the SwiGLU MLP, for one, writes its gradient transposed in a
strided loop fusion. Restricting the YNNPACK fusions to the dots alone
(``xla_cpu_experimental_ynn_fusion_type=dot``) made the benchmark's reward-model step 15%, its SFT
step 17% and its PPO iteration 21% faster on a 2-core AVX2 CPU (``benchmarks/README.md``).

The options go to ``jax.jit(..., compiler_options=...)`` of the programs that train (the phase
step and the PPO programs), so nothing global changes. They are left out when:

- the default backend is not CPU;
- ``XLA_FLAGS`` already sets the same option (the user's choice wins);
- ``RLHF_JAX_XLA_DEFAULTS=0`` is set;
- this jaxlib does not know the option (checked once by compiling a trivial program).
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
ENV_SWITCH = "RLHF_JAX_XLA_DEFAULTS"


def _wanted(backend: str, xla_flags: str, switch: str) -> dict:
    if backend != "cpu" or switch.strip().lower() in ("0", "false", "no", "off"):
        return {}
    return {k: v for k, v in CPU_OPTIONS.items() if f"--{k}" not in xla_flags}


@functools.cache
def _supported(items: tuple) -> bool:
    try:
        jax.jit(lambda x: x @ x, compiler_options=dict(items))(jnp.ones((2, 2)))
    except Exception as e:  # any refusal means: compile without them
        warnings.warn(f"XLA options {dict(items)} not used: {e}", stacklevel=3)
        return False
    return True


def compiler_options() -> dict | None:
    """The options for a training program on the default backend, or None (XLA's defaults)."""
    options = _wanted(
        jax.default_backend(), os.environ.get("XLA_FLAGS", ""), os.environ.get(ENV_SWITCH, "1")
    )
    if not options or not _supported(tuple(sorted(options.items()))):
        return None
    return options
