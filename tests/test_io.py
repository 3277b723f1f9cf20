"""What a resumable run's chunks are matched on: config, negmeta's code, JAX."""

import dataclasses
import os
import tempfile

import jax
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

  def test_default_is_the_installed_negmeta_source(self):
    package = os.path.dirname(os.path.abspath(io.__file__))
    self.assertEqual(io.code_fingerprint(), io.code_fingerprint(package))


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


if __name__ == "__main__":
  absltest.main()
