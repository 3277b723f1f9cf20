"""Independent grid members over several devices, with JAX's own sharding.

Every sweep in negmeta maps a kernel over independent members (runs of the
linear study, (α, β) cells of a convergence map, (α_t, seed) members of a
sinusoid grid). Nothing reduces across members, so sharding their leading axis
over a 1-D device mesh is all it takes to spread a sweep over GPUs, TPUs or
(faked) CPU devices: the kernels are unchanged, XLA's GSPMD partitioner
propagates the member sharding through them.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def device_mesh(devices=None, axis_name: str = "members") -> Mesh:
  """A 1-D mesh over `devices` (default: all), with an Auto (GSPMD) axis.

  Auto axes let XLA propagate the member sharding through a kernel, so a
  caller's mesh of any axis type is rebuilt this way by the functions that
  take one.

  Args:
    devices: devices to use (default `jax.devices()`).
    axis_name: the mesh axis name.

  Returns:
    A Mesh of shape [len(devices)].
  """
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (axis_name,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def padded_size(size: int, mesh: Mesh | None) -> int:
  """`size` rounded up to a multiple of the mesh's devices (size itself if None)."""
  if mesh is None:
    return size
  return math.ceil(size / mesh.size) * mesh.size


def leading_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over the mesh's (only) axis, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def pad_leading(tree: Any, size: int) -> Any:
  """Every leaf's leading axis padded to `size` by repeating its last entry.

  Padding members are copies of the last member: they run, are dropped
  afterwards, and (nothing reducing across members) change no other member.
  """
  def pad(x):
    x = jnp.asarray(x)
    extra = size - x.shape[0]
    if extra == 0:
      return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])
  return jax.tree.map(pad, tree)


def shard_members(tree: Any, mesh: Mesh | None) -> tuple[Any, int]:
  """Pads and constrains a tree of [G, ...] member arrays to the mesh (inside jit).

  Args:
    tree: arrays with a common leading member axis G.
    mesh: a 1-D mesh, or None (then `tree` is returned unchanged).

  Returns:
    (tree with leading axis `padded_size(G, mesh)` sharded over the mesh, G).
  """
  size = jax.tree.leaves(tree)[0].shape[0]
  if mesh is None:
    return tree, size
  mesh = device_mesh(mesh.devices.flat, mesh.axis_names[0])
  padded = pad_leading(tree, padded_size(size, mesh))
  return jax.lax.with_sharding_constraint(padded, leading_sharding(mesh)), size


def batched_map(fn, xs: Any, batch_size: int, mesh: Mesh | None = None) -> Any:
  """`lax.map` of `fn` over members in vmapped batches, each split over `mesh`.

  Like ``jax.lax.map(fn, xs, batch_size=batch_size)``, but the members are
  padded to whole batches (copies of the last member, dropped from the output)
  so one compiled body serves every batch, and with a mesh each batch (its size
  rounded up to a multiple of the devices) is split over the devices.

  Args:
    fn: function of one member's slice of `xs`.
    xs: a tree of [M, ...] arrays.
    batch_size: members per batch (≥ 1; capped at M).
    mesh: optional 1-D mesh.

  Returns:
    fn's outputs stacked along a leading [M] axis.
  """
  size = jax.tree.leaves(xs)[0].shape[0]
  batch = padded_size(min(batch_size, size), mesh)
  padded = math.ceil(size / batch) * batch
  xs = jax.tree.map(lambda x: x.reshape((padded // batch, batch) + x.shape[1:]),
                    pad_leading(xs, padded))

  def one_batch(members):
    members, _ = shard_members(members, mesh)
    return jax.vmap(fn)(members)

  out = jax.lax.map(one_batch, xs)
  return jax.tree.map(lambda y: y.reshape((padded,) + y.shape[2:])[:size], out)
