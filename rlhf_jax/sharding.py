"""One device mesh, partition rules from logical axis names, and batch placement.

The mesh has three named axes (DESIGN.md):
  data    pure data parallelism: parameters replicated, batch split;
  fsdp    batch split *and* parameters sharded along their 'embed' axis (ZeRO-3 style: XLA
          all-gathers a layer's weights where they are used and reduce-scatters gradients);
  tensor  Megatron-style model parallelism over heads, MLP units and vocabulary.
The same code runs on 1 CPU, 8 fake CPU devices, a GPU, a slice, and several hosts — the
compiler inserts the collectives; nothing here is host-count specific except where data enters
(``shard_batch``) and ``initialize_distributed``.

Model parameters carry logical axis names in their ``out_sharding`` metadata
(``rlhf_jax.models.LOGICAL_AXES``); ``DEFAULT_RULES`` maps them onto mesh axes. A dimension
that does not divide by its mesh axis size is replicated along that axis instead (e.g. one KV
head under tensor=2) — correct, only less sharded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical parameter axis → mesh axis (None: replicated).
DEFAULT_RULES: Mapping[str, str | None] = {
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "positions": None,
    "layers": None,  # the scanned blocks: each device holds every layer's slice
    "lora_rank": None,  # an adapter's rank: small, replicated
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes; one of them may be -1 to take all remaining devices."""

    data: int = 1  # pure data parallelism
    fsdp: int = -1  # data parallelism with sharded parameters and optimizer state
    tensor: int = 1  # model parallelism over heads / MLP / vocabulary
    num_devices: int = -1  # use the first N devices (-1: all of them, on every host)

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        for name, size in zip(MESH_AXES, sizes, strict=True):
            if size == 0 or size < -1:
                raise ValueError(f"mesh.{name}={size}; expected a positive size or -1")
        fill = [i for i, s in enumerate(sizes) if s == -1]
        if len(fill) > 1:
            raise ValueError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
        fixed = int(np.prod([s for s in sizes if s != -1]))
        if fill:
            if num_devices % fixed:
                raise ValueError(
                    f"{num_devices} devices do not divide by the fixed mesh axes "
                    f"(data={self.data}, fsdp={self.fsdp}, tensor={self.tensor})"
                )
            sizes[fill[0]] = num_devices // fixed
        if int(np.prod(sizes)) != num_devices:
            raise ValueError(
                f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs "
                f"{int(np.prod(sizes))} devices; {num_devices} are available"
            )
        return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh over ``devices`` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    if config.num_devices != -1:
        if not 0 < config.num_devices <= len(devices):
            raise ValueError(
                f"mesh.num_devices={config.num_devices}; {len(devices)} devices are available"
            )
        devices = devices[: config.num_devices]
    shape = config.shape(len(devices))
    # Auto axes: the compiler propagates shardings from the inputs and outputs we annotate,
    # rather than every jnp op carrying a sharding in its type.
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def logical_to_spec(
    names: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Mapping[str, str | None] = DEFAULT_RULES,
) -> PartitionSpec:
    """PartitionSpec for one array from its logical axis names, replicating indivisible dims."""
    if len(names) != len(shape):
        raise ValueError(f"logical axes {tuple(names)} do not match array shape {tuple(shape)}")
    spec, used = [], set()
    for name, dim in zip(names, shape, strict=True):
        if name is not None and name not in rules:
            raise ValueError(f"no partition rule for logical axis {name!r}; rules: {dict(rules)}")
        axis = None if name is None else rules[name]
        # A mesh axis may shard one dimension only, and only if it divides it.
        if axis is None or axis in used or dim % mesh.shape[axis]:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return PartitionSpec(*spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state, mesh: Mesh, rules: Mapping[str, str | None] = DEFAULT_RULES):
    """A tree like ``state`` (an ``nnx.State``, abstract or concrete) of NamedShardings.

    Variables without logical names (optimizer counters, scalars) are replicated.
    """

    def one(x):
        if _is_variable(x):
            names = x.get_metadata().get("out_sharding") or ()
            value = x.get_value() if hasattr(x, "get_value") else x.value
            shape = np.shape(value)
            spec = logical_to_spec(names, shape, mesh, rules) if names else PartitionSpec()
            return x.replace(value=NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=_is_variable)


def tree_shardings(tree, params_shardings, mesh: Mesh):
    """Shardings for any tree holding parameter-shaped leaves (optimizer moments).

    optax states mirror the parameter tree inside; leaves whose shape matches a parameter's
    take that parameter's sharding (by tree path suffix), everything else is replicated.
    """
    by_path = {}
    for path, sharding in jax.tree_util.tree_flatten_with_path(params_shardings)[0]:
        by_path[_path_key(path)] = sharding
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path, _):
        key = _path_key(path)
        for n in range(len(key)):
            if key[n:] in by_path:
                return by_path[key[n:]]
        return replicated

    return jax.tree_util.tree_map_with_path(one, tree)


def _path_key(path) -> tuple:
    keys = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                keys.append(getattr(entry, attr))
                break
    # Variables wrap their value in a node of their own; drop that level's key.
    return tuple(k for k in keys if k != "value")


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis split over data × fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places this host's slice of a global batch onto the mesh as global arrays.

    Each host passes only the rows it loaded (``rlhf_jax.data`` gives every host its slice);
    the global batch is their concatenation in process order.
    """
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)), np.asarray(x))
        for key, x in batch.items()
    }


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """``jax.distributed.initialize`` from arguments, else from the environment.

    Environment: RLHF_JAX_COORDINATOR (host:port), RLHF_JAX_NUM_PROCESSES, RLHF_JAX_PROCESS_ID.
    With none of them set and no arguments, JAX's own cluster detection runs (SLURM, TPU pods,
    …); on a plain single machine nothing is initialised.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("RLHF_JAX_COORDINATOR")
    if num_processes is None and "RLHF_JAX_NUM_PROCESSES" in env:
        num_processes = int(env["RLHF_JAX_NUM_PROCESSES"])
    if process_id is None and "RLHF_JAX_PROCESS_ID" in env:
        process_id = int(env["RLHF_JAX_PROCESS_ID"])
    if coordinator_address is None and num_processes is None and process_id is None:
        return
    if coordinator_address is None or num_processes is None or process_id is None:
        raise ValueError(
            "multi-host needs all of coordinator_address, num_processes and process_id "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
