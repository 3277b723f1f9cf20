"""What a resumable run's chunks are matched on: config, negmeta's code, JAX."""

import dataclasses
import errno
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from negmeta import _checks, io


@dataclasses.dataclass(frozen=True)
class _Config:
  p: int = 3
  seed: int = 0


def _write(root, rel, text):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


class CodeFingerprintTest(absltest.TestCase):

  def test_any_source_edit_changes_it_and_caches_do_not(self):
    with tempfile.TemporaryDirectory() as d:
      _write(d, "__init__.py", "")
      _write(d, "sub/kernel.py", "x = 1\n")
      base = io.code_fingerprint(d)
      self.assertLen(base, 16)
      self.assertEqual(io.code_fingerprint(d), base)             # deterministic
      _write(d, "__pycache__/kernel.cpython-311.pyc", "bytes")    # not source
      _write(d, "sub/notes.txt", "not python")
      self.assertEqual(io.code_fingerprint(d), base)
      _write(d, "sub/kernel.py", "x = 2\n")                     # an edit
      edited = io.code_fingerprint(d)
      self.assertNotEqual(edited, base)
      _write(d, "sub/extra.py", "")                             # a new module
      self.assertNotEqual(io.code_fingerprint(d), edited)
      os.remove(os.path.join(d, "sub/extra.py"))
      os.rename(os.path.join(d, "sub/kernel.py"), os.path.join(d, "sub/other.py"))
      self.assertNotEqual(io.code_fingerprint(d), edited)       # same bytes, moved

  def test_default_hashes_negmeta_source(self):
    # A copy of the package's .py files (only) hashes the same as the default;
    # an edit to any one module of the copy changes it.
    package = os.path.dirname(os.path.abspath(io.__file__))
    with tempfile.TemporaryDirectory() as d:
      copy = os.path.join(d, "negmeta")
      shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
      self.assertEqual(io.code_fingerprint(copy), io.code_fingerprint())
      with open(os.path.join(copy, "linear", "_maml.py"), "a") as f:
        f.write("\n")
      self.assertNotEqual(io.code_fingerprint(copy), io.code_fingerprint())


class ConfigIdentityTest(absltest.TestCase):

  def test_identity_names_config_code_and_jax(self):
    ident = io.config_identity(_Config(), protocol="reduced")
    self.assertEqual(ident["p"], 3)
    self.assertEqual(ident["protocol"], "reduced")
    self.assertEqual(ident["negmeta_code"], io.code_fingerprint())
    self.assertEqual(ident["jax"], jax.__version__)
    self.assertEqual(ident["jax_threefry_partitionable"],
                     bool(jax.config.jax_threefry_partitionable))

  def test_chunks_of_other_code_are_not_loaded(self):
    ident = io.config_identity(_Config())
    with tempfile.TemporaryDirectory() as d:
      io.ChunkStore(d, io.fingerprint(ident)).save(0, {"loss": [1.0, 2.0]})
      self.assertIsNotNone(io.ChunkStore(d, io.fingerprint(ident)).load(0))
      edited = dict(ident, negmeta_code="0" * 16)
      self.assertIsNone(io.ChunkStore(d, io.fingerprint(edited)).load(0))
      reseeded = io.config_identity(_Config(seed=1))
      self.assertIsNone(io.ChunkStore(d, io.fingerprint(reseeded)).load(0))

  def test_fingerprint_does_not_depend_on_key_order(self):
    self.assertEqual(io.fingerprint({"p": 3, "seed": 0}), io.fingerprint({"seed": 0, "p": 3}))
    self.assertNotEqual(io.fingerprint({"p": 3, "seed": 0}), io.fingerprint({"p": 3, "seed": 1}))


def _written_record_text(record) -> str:
  """The text of the JSON file `write_results` writes for `record`."""
  with tempfile.TemporaryDirectory() as d:
    json_path = os.path.join(d, "r.json")
    io.write_results(json_path, record, os.path.join(d, "r.npz"), {}, {})
    with open(json_path) as f:
      return f.read()


class WriteResultsTest(absltest.TestCase):

  def test_a_directory_in_the_way_writes_nothing(self):
    # Before: runs.npz and the PNG were replaced, then results.json failed.
    with tempfile.TemporaryDirectory() as d:
      paths = {k: os.path.join(d, k) for k in ("results.json", "runs.npz")}
      os.mkdir(paths["results.json"])
      with self.assertRaises(_checks.ConfigError) as ctx:
        io.write_results(paths["results.json"], {"a": 1}, paths["runs.npz"],
                         {"x": np.arange(3)}, {})
      self.assertEqual(ctx.exception.name, "workdir")
      self.assertIn("'results.json'", ctx.exception.detail)
      self.assertEqual(sorted(os.listdir(d)), ["results.json"])   # no npz, no temp

  def test_writes_every_file_and_no_temporaries(self):
    with tempfile.TemporaryDirectory() as d:
      json_path, npz_path = os.path.join(d, "r.json"), os.path.join(d, "r.npz")
      io.write_results(json_path, {"a": float("nan")}, npz_path, {"x": np.arange(3)}, {})
      self.assertEqual(sorted(os.listdir(d)), ["r.json", "r.npz"])
      with open(json_path) as f:
        self.assertIn('"a": null', f.read())
      with np.load(npz_path) as data:
        np.testing.assert_array_equal(data["x"], np.arange(3))

  def test_nonfinite_values_nested_in_the_record_are_null(self):
    # Per-grid entries are dicts in a list: their NaN/Inf must not reach the
    # file as NaN/Infinity, which is not JSON.
    record = {"grid": [{"mean": float("nan"), "values": [1.0, float("inf")]}],
              "pair": (float("-inf"), 2.0), "array": np.array([np.nan, 3.0])}
    def no_constants(name):
      raise AssertionError(f"{name} written to JSON")
    self.assertEqual(json.loads(_written_record_text(record), parse_constant=no_constants),
                     {"grid": [{"mean": None, "values": [1.0, None]}],
                      "pair": [None, 2.0], "array": [None, 3.0]})

  def test_numpy_and_jax_values_are_written_as_json_values(self):
    record = {"i": np.int64(3), "f32": np.float32(0.5), "b": np.bool_(True),
              "a": np.arange(2, dtype=np.int32), "j": jnp.asarray([1.5, 2.5]),
              "js": jnp.asarray(4.0), "nan32": np.float32("nan")}
    loaded = json.loads(_written_record_text(record))
    with self.assertRaisesRegex(TypeError, "not JSON serializable: object"):
      _written_record_text({"x": object()})
    self.assertEqual(loaded, {"i": 3, "f32": 0.5, "b": True, "a": [0, 1], "j": [1.5, 2.5],
                              "js": 4.0, "nan32": None})
    self.assertIs(loaded["b"], True)
    self.assertIsInstance(loaded["i"], int)

  def test_a_failed_write_leaves_every_file_as_it_was(self):
    # The record's directory is missing: its write fails after the npz was
    # rendered. The old npz stays, and no temporary file is left behind.
    with tempfile.TemporaryDirectory() as d:
      npz_path = os.path.join(d, "r.npz")
      io.write_npz(npz_path, x=np.zeros(2))
      with self.assertRaises(OSError):
        io.write_results(os.path.join(d, "missing", "r.json"), {"a": 1}, npz_path,
                         {"x": np.ones(5)}, {})
      self.assertEqual(os.listdir(d), ["r.npz"])
      with np.load(npz_path) as data:
        np.testing.assert_array_equal(data["x"], np.zeros(2))

  def test_files_get_the_umask_permissions_not_mkstemps_0600(self):
    old = os.umask(0o027)
    try:
      with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "r.npz")
        io.write_npz(path, x=np.arange(2))
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)
    finally:
      os.umask(old)

  def test_figures_are_closed_whether_or_not_the_record_builds(self):
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib only here
    with tempfile.TemporaryDirectory() as d:
      paths = [os.path.join(d, name) for name in ("r.json", "r.npz", "f.png")]
      fig = plt.figure()
      io.write_results(paths[0], {"a": 1}, paths[1], {}, {paths[2]: fig})
      self.assertNotIn(fig.number, plt.get_fignums())
      fig = plt.figure()
      with self.assertRaises(TypeError):          # not JSON serializable
        io.write_results(paths[0], {"a": object()}, paths[1], {}, {paths[2]: fig})
      self.assertNotIn(fig.number, plt.get_fignums())

  def test_the_record_is_moved_into_place_last(self):
    # A results.json on disk means the arrays beside it are complete.
    moved, replace = [], os.replace
    def recording(src, dst):
      moved.append(os.path.basename(dst))
      replace(src, dst)
    with tempfile.TemporaryDirectory() as d, mock.patch.object(io.os, "replace",
                                                               recording):
      io.write_results(os.path.join(d, "r.json"), {"a": 1}, os.path.join(d, "r.npz"),
                       {"x": np.arange(3)}, {})
    self.assertEqual(moved, ["r.npz", "r.json"])


class PrepareWorkdirTest(absltest.TestCase):

  def test_errors_name_the_flag_given(self):
    with self.assertRaises(_checks.ConfigError) as ctx:
      io.prepare_workdir("", flag="out")
    self.assertEqual(ctx.exception.name, "out")
    with tempfile.TemporaryDirectory() as d:
      blocker = os.path.join(d, "file")
      open(blocker, "w").close()
      with self.assertRaises(_checks.ConfigError) as ctx:
        io.prepare_workdir(os.path.join(blocker, "sub"), flag="out")
      self.assertEqual(ctx.exception.name, "out")
      self.assertIn("must be a writable directory", ctx.exception.detail)

  def test_an_existing_directory_that_cannot_be_written_is_refused(self):
    # Simulated (the suite may run as root, who can write any directory).
    denied = OSError(errno.EACCES, "Permission denied")
    with tempfile.TemporaryDirectory() as d, mock.patch.object(
        io.tempfile, "mkstemp", side_effect=denied):
      with self.assertRaises(_checks.ConfigError) as ctx:
        io.prepare_workdir(d)
    self.assertEqual(ctx.exception.name, "workdir")
    self.assertIn("Permission denied", ctx.exception.detail)

  def test_home_is_expanded(self):
    with tempfile.TemporaryDirectory() as d, mock.patch.dict(os.environ, HOME=d):
      self.assertEqual(io.prepare_workdir("~/out"), os.path.join(os.path.abspath(d), "out"))
      self.assertTrue(os.path.isdir(os.path.join(d, "out")))


class RuntimeRecordTest(absltest.TestCase):

  def test_versions_flags_and_revision_are_the_real_ones(self):
    versions = io.package_versions()
    for name in ("jax", "jaxlib", "numpy"):
      self.assertEqual(versions[name], importlib.metadata.version(name), msg=name)
    with jax.enable_x64(False):
      self.assertFalse(io.runtime_record()["jax_enable_x64"])
    rec = io.runtime_record()
    self.assertTrue(rec["jax_enable_x64"])      # conftest enables it
    self.assertEqual(rec["devices"], [str(d) for d in jax.devices()])
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(io.__file__))
    if head.returncode:
      self.skipTest("negmeta is not in a git checkout")
    self.assertEqual(rec["git_sha"], head.stdout.strip())


class ChunkStoreTest(absltest.TestCase):

  def test_unreadable_or_untagged_chunks_are_recomputed_not_fatal(self):
    with tempfile.TemporaryDirectory() as d:
      store = io.ChunkStore(d, "sweep")
      path = store._path(0)
      for content in (b"", b"not a zip file", b"PK\x03\x04truncated"):
        with open(path, "wb") as f:
          f.write(content)
        self.assertIsNone(store.load(0), msg=content)
      np.savez(path, loss=np.ones(2))            # an npz without the tag
      self.assertIsNone(store.load(0))
      store.save(0, {"loss": np.ones(2)})        # overwrites the bad file
      np.testing.assert_array_equal(store.load(0)["loss"], np.ones(2))

  def test_saving_recreates_a_removed_directory(self):
    with tempfile.TemporaryDirectory() as d:
      store = io.ChunkStore(os.path.join(d, "chunks"), "sweep")
      shutil.rmtree(store.directory)
      store.save(1, {"loss": np.ones(2)})
      np.testing.assert_array_equal(store.load(1)["loss"], np.ones(2))

  def test_fields_and_leading_dimensions_are_checked(self):
    with tempfile.TemporaryDirectory() as d:
      store = io.ChunkStore(d, "sweep")
      store.save(0, {"a": np.zeros((4, 3)), "b": np.zeros((4,))})
      self.assertIsNotNone(store.load(0, fields=("b", "a"), leading=(4,)))
      self.assertIsNone(store.load(0, fields=("a",)))               # one too many
      self.assertIsNone(store.load(0, fields=("a", "b", "c")))      # one missing
      self.assertIsNone(store.load(0, leading=(5,)))
      self.assertIsNone(store.load(0, leading=(4, 3)))              # b is [4]

  def test_trees_load_only_with_their_structure_shapes_and_dtypes(self):
    tree = {"w": np.ones((2, 3), np.float32), "n": (np.arange(3), np.float64(2.5))}
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                        tree)
    with tempfile.TemporaryDirectory() as d:
      store = io.ChunkStore(d, "stage")
      store.save_tree(0, tree, seconds=1.5)
      loaded, extra = store.load_tree(0, like)
      self.assertEqual(jax.tree.structure(loaded), jax.tree.structure(tree))
      for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(tree)):
        np.testing.assert_array_equal(got, want)
        self.assertEqual(got.dtype, np.asarray(want).dtype)
      self.assertEqual(float(extra["seconds"]), 1.5)
      other_dtype = dict(like, w=jax.ShapeDtypeStruct((2, 3), np.float64))
      other_shape = dict(like, w=jax.ShapeDtypeStruct((3, 2), np.float32))
      one_more_leaf = dict(like, extra=jax.ShapeDtypeStruct((), np.float32))
      one_leaf_fewer = {"n": like["n"]}      # its leaves are the first two saved
      for name, wrong in (("dtype", other_dtype), ("shape", other_shape),
                          ("more", one_more_leaf), ("fewer", one_leaf_fewer)):
        self.assertIsNone(store.load_tree(0, wrong), msg=name)


if __name__ == "__main__":
  absltest.main()
