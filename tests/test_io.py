"""What a resumable run's chunks are matched on: config, negmeta's code, JAX."""

import dataclasses
import os
import tempfile

import jax
from absl.testing import absltest

from negmeta import io


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


if __name__ == "__main__":
  absltest.main()
