"""Random draws shaped for fast compilation.

`jax.random.normal(key, (a, b, c))` with a multi-dimensional shape lowers (with the
default partitionable threefry) to an HLO graph that XLA:CPU compiles 4-5 times
slower than the same number of draws in one flat vector, and every separate call
compiles its own copy. Samplers therefore draw all the normals they need in *one*
flat vector and cut it into the arrays they want (BUILD_NOTES.md §4: this took
the paper-scale sweep's compile time from tens of seconds to a few).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def normals(key: jax.Array, shapes: Sequence[tuple[int, ...]],
            dtype=jnp.float64) -> list[jax.Array]:
  """Independent standard normal arrays of the given shapes from one flat draw.

  Args:
    key: PRNG key.
    shapes: the wanted shapes (static).
    dtype: float dtype.

  Returns:
    One array per shape, jointly i.i.d. N(0, 1).
  """
  sizes = [math.prod(s) for s in shapes]
  flat = jax.random.normal(key, (sum(sizes),), dtype)
  out, start = [], 0
  for shape, size in zip(shapes, sizes):
    out.append(flat[start:start + size].reshape(shape))
    start += size
  return out
