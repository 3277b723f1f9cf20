"""Results storage: atomic writes, run records, resumable chunk stores.

Everything written goes to a temporary file in the destination directory and is
moved into place with `os.replace`, so a reader (or a resumed run) never sees a
half-written file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from io import BytesIO
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from negmeta import _checks


def _umask() -> int:
  umask = os.umask(0)
  os.umask(umask)
  return umask


def _json_default(obj):
  if hasattr(obj, "__array__"):   # NumPy and JAX arrays and scalars
    return np.asarray(obj).tolist()
  raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _finite_or_none(obj):
  # JSON has no NaN/Inf: write null, the honest "no value".
  if isinstance(obj, float):
    return obj if np.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite_or_none(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite_or_none(v) for v in obj]
  return obj


def _json_bytes(record: Mapping[str, Any]) -> bytes:
  text = json.dumps(_finite_or_none(json.loads(json.dumps(record, default=_json_default))),
                    indent=2, sort_keys=False)
  return (text + "\n").encode()


def _npz_bytes(arrays: Mapping[str, Any]) -> bytes:
  buffer = BytesIO()
  np.savez_compressed(buffer, **arrays)
  return buffer.getvalue()


def _png_bytes(figure) -> bytes:
  buffer = BytesIO()
  figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
  return buffer.getvalue()


def _write_bytes(path: str, data: bytes) -> None:
  _write_all({path: data})


def write_npz(path: str, **arrays) -> None:
  """Atomically writes compressed arrays."""
  _write_bytes(path, _npz_bytes(arrays))


def write_results(json_path: str, record: Mapping[str, Any], npz_path: str,
                  arrays: Mapping[str, Any], figures: Mapping[str, Any]) -> None:
  """An experiment's files: everything rendered in memory before anything is written.

  A record, array set or figure that fails to build (e.g. a figure of a fully
  diverged run) therefore leaves the workdir as it was, never a new npz beside
  an old results.json. Each file is then written atomically, the JSON record
  last. The figures are closed whatever happens.

  Args:
    json_path: path of the JSON record.
    record: the record (NaN/Inf become null).
    npz_path: path of the array file.
    arrays: arrays to save (compressed).
    figures: PNG path → matplotlib Figure.
  """
  from negmeta import plotting  # local: matplotlib only when saving.
  try:
    contents = {npz_path: _npz_bytes(arrays)}
    contents.update({path: _png_bytes(fig) for path, fig in figures.items()})
    contents[json_path] = _json_bytes(record)
  finally:
    for fig in figures.values():
      plotting.close(fig)
  _write_all(contents)


def _write_all(contents: Mapping[str, bytes]) -> None:
  """Writes several files all or none (as far as the file system allows).

  Every destination is checked, then every file is written to a temporary
  file beside it, and only then are they moved into place, in order. A
  destination blocked by a directory, or a failed write, leaves every
  destination as it was.

  Raises:
    ConfigError: naming `workdir`, when a directory is in a file's way.
  """
  for path in contents:
    if os.path.isdir(path):
      raise _checks.ConfigError(
          "workdir", f"must not hold a directory named {os.path.basename(path)!r} "
          f"({path}), where the results go; nothing was written")
  temps = {}
  try:
    for path, data in contents.items():
      fd, temps[path] = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                         prefix=".tmp-", suffix=os.path.splitext(path)[1])
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      os.chmod(temps[path], 0o666 & ~_umask())   # mkstemp creates 0600
    for path, tmp in temps.items():
      os.replace(tmp, path)
  finally:
    for tmp in temps.values():
      if os.path.exists(tmp):
        os.remove(tmp)


def prepare_workdir(workdir: str, flag: str = "workdir") -> str:
  """Creates `workdir` if needed and checks that it is writable.

  Raises:
    ConfigError: naming `flag`, if the directory cannot be created or written.
  """
  if not workdir:
    raise _checks.ConfigError(flag, "must be a writable directory path (got '')")
  path = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise _checks.ConfigError(
        flag, f"must be a writable directory (cannot write {path}: {e.strerror})") from None
  return path


def package_versions() -> dict[str, str]:
  """Versions of Python and the packages that determine results."""
  out = {"python": sys.version.split()[0], "platform": platform.platform()}
  for name in ("negmeta", "jax", "jaxlib", "numpy", "optax", "flax", "chex", "matplotlib"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def runtime_record() -> dict[str, Any]:
  """Versions, backend, devices, x64/RNG flags and git revision, for results.json."""
  import jax  # local: keep `negmeta.io` importable before JAX is configured.
  record = {"versions": package_versions(),
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "jax_enable_x64": bool(jax.config.jax_enable_x64),
            "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
  try:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(__file__), timeout=5)
    record["git_sha"] = sha.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    record["git_sha"] = None
  return record


def code_fingerprint(directory: str | None = None) -> str:
  """A short hash of a package's Python source (default: negmeta's own).

  Hashes every `*.py` file under `directory` (relative path and bytes, in
  sorted order; caches such as `__pycache__` are not read), so any edit to
  the code that computes a sweep changes it.

  Args:
    directory: the package directory (default: the installed negmeta's).

  Returns:
    16 hex digits.
  """
  root = directory or os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  files = sorted(os.path.relpath(os.path.join(d, f), root)
                 for d, _, names in os.walk(root) for f in names if f.endswith(".py"))
  for rel in files:
    with open(os.path.join(root, rel), "rb") as f:
      content = f.read()
    digest.update(rel.replace(os.sep, "/").encode() + b"\0")
    digest.update(hashlib.sha256(content).digest())
  return digest.hexdigest()[:16]


def config_identity(config: Any, **extra: Any) -> dict[str, Any]:
  """What a resumable run's saved chunks depend on: config, code and JAX.

  Args:
    config: a (validated) dataclass config.
    **extra: further entries (e.g. a protocol's name).

  Returns:
    The config's fields, a hash of negmeta's source (`code_fingerprint`: an
    edit between an interrupted run and its rerun recomputes everything
    rather than mixing chunks of two versions of the code), the JAX version
    and its PRNG implementation flag (the same seed may draw other numbers
    under either) and `extra`, for `fingerprint`.
  """
  import jax  # local: the rest of io needs no JAX.
  return dict(dataclasses.asdict(config), negmeta_code=code_fingerprint(),
              jax=jax.__version__,
              jax_threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
              **extra)


def fingerprint(config: Mapping[str, Any]) -> str:
  """A short stable hash of a JSON-able config, for matching saved chunks."""
  text = json.dumps(config, sort_keys=True, default=_json_default)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class ChunkStore:
  """Finished chunks of a long sweep, saved atomically so a rerun resumes.

  Each chunk is `chunk_<index>.npz` in `directory`, tagged with the sweep's
  fingerprint; chunks of a different sweep are ignored (never mixed in).
  """

  def __init__(self, directory: str, fingerprint_: str):
    self.directory = directory
    self.fingerprint = fingerprint_
    os.makedirs(directory, exist_ok=True)

  def _path(self, index: int) -> str:
    return os.path.join(self.directory, f"chunk_{index:05d}.npz")

  def load(self, index: int, *, fields: Sequence[str] | None = None,
           leading: Sequence[int] = ()) -> dict[str, np.ndarray] | None:
    """The saved arrays of chunk `index`, if they are this sweep's.

    Args:
      index: the chunk's number.
      fields: the names the chunk must hold, exactly (None: any).
      leading: the leading dimensions every array must have.

    Returns:
      {name: array}, or None when the chunk is absent, unreadable, from
      another sweep, or of other fields or leading dimensions (then it is
      recomputed and overwritten, never mixed in).
    """
    path = self._path(index)
    if not os.path.isfile(path):
      return None
    try:
      with np.load(path) as data:
        if "_fingerprint" not in data.files or str(data["_fingerprint"]) != self.fingerprint:
          return None
        arrays = {k: data[k] for k in data.files if k != "_fingerprint"}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
      return None      # unreadable (e.g. truncated by hand): recompute, overwrite
    if fields is not None and set(arrays) != set(fields):
      return None
    if any(v.shape[:len(leading)] != tuple(leading) for v in arrays.values()):
      return None
    return arrays

  def save(self, index: int, arrays: Mapping[str, np.ndarray]) -> None:
    os.makedirs(self.directory, exist_ok=True)   # in case it was removed meanwhile
    write_npz(self._path(index), _fingerprint=np.asarray(self.fingerprint), **arrays)

  def save_tree(self, index: int, tree: Any, **extra: Any) -> None:
    """Saves a pytree's leaves and named extra values as chunk `index`.

    Args:
      index: the chunk's number.
      tree: a pytree of arrays (NumPy or JAX); saved as NumPy arrays.
      **extra: scalars or arrays saved beside it (e.g. seconds=12.5), returned
        by `load_tree`.
    """
    import jax  # local: the rest of io needs no JAX.
    leaves = jax.tree.leaves(tree)
    arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays.update({f"extra_{k}": np.asarray(v) for k, v in extra.items()})
    self.save(index, arrays)

  def load_tree(self, index: int, like: Any
                ) -> tuple[Any, dict[str, np.ndarray]] | None:
    """A chunk saved by `save_tree`, if it matches the tree expected.

    Args:
      index: the chunk's number.
      like: the expected pytree: arrays or `jax.ShapeDtypeStruct`s (e.g. from
        `jax.eval_shape`); its structure, and every leaf's shape and dtype,
        must match the saved chunk.

    Returns:
      (the pytree with NumPy leaves, {name: extra value}), or None when the
      chunk is absent, from another sweep, or of another structure, shape or
      dtype (then it is recomputed, never mixed in).
    """
    import jax  # local: the rest of io needs no JAX.
    saved = self.load(index)
    if saved is None:
      return None
    expected, treedef = jax.tree.flatten(like)
    names = [f"leaf_{i}" for i in range(len(expected))]
    if sorted(k for k in saved if k.startswith("leaf_")) != sorted(names):
      return None
    leaves = [saved[n] for n in names]
    if any(x.shape != tuple(e.shape) or x.dtype != np.dtype(e.dtype)
           for x, e in zip(leaves, expected)):
      return None
    extra = {k[len("extra_"):]: v for k, v in saved.items() if k.startswith("extra_")}
    return jax.tree.unflatten(treedef, leaves), extra
