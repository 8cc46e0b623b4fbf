"""``python -m rlhf_jax``: the ``rlhf-jax`` command."""

from rlhf_jax.cli import run

run()
