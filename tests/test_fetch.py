"""Tests madry_models.fetch against a fake release served on 127.0.0.1."""

import hashlib
import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from unittest import mock

import numpy as np
import tensorflow as tf

from madry_models import fetch as fetch_lib
from madry_models.checkpoints import resolve_checkpoint

NAME = 'mnist_adv_trained'
VALUES = {
    'Variable': np.arange(6, dtype=np.float32).reshape(2, 3),
    'Variable_1': np.array([0.5, -1.5, 2.0], dtype=np.float32),
}


def _fake_release_zip(extra_entries=()):
  """A zip laid out like the release: models/adv_trained/checkpoint-99900.*."""
  with tempfile.TemporaryDirectory() as build:
    folder = os.path.join(build, 'models', 'adv_trained')
    os.makedirs(folder)
    with tf.Graph().as_default():
      for name, value in VALUES.items():
        tf.compat.v1.Variable(value, name=name)
      tf.compat.v1.train.get_or_create_global_step()
      saver = tf.compat.v1.train.Saver(save_relative_paths=True)
      with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        saver.save(sess, os.path.join(folder, 'checkpoint'), global_step=99900)
    with open(os.path.join(folder, 'checkpoint')) as f:
      assert 'model_checkpoint_path: "checkpoint-99900"' in f.read()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
      archive.writestr('models/', b'')
      archive.writestr('models/adv_trained/', b'')
      for entry in sorted(os.listdir(folder)):
        archive.write(os.path.join(folder, entry), f'models/adv_trained/{entry}')
      for name, data in extra_entries:
        archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def _closed_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class _Handler(http.server.BaseHTTPRequestHandler):
  timeout = 10  # a stuck client cannot hold the server thread
  files = {}
  requests = []

  def do_GET(self):  # pylint: disable=invalid-name
    self.requests.append(self.path)
    data = self.files.get(self.path)
    if data is None:
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header('Content-Type', 'application/zip')
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


class FetchTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.zip_bytes = _fake_release_zip()
    cls.traversal_zip = _fake_release_zip([('models/../../evil.txt', b'pwned')])

  def setUp(self):
    super().setUp()
    # Never send 127.0.0.1 through a proxy that the environment may name.
    env = mock.patch.dict(os.environ, {'no_proxy': '127.0.0.1,localhost',
                                       'NO_PROXY': '127.0.0.1,localhost'})
    env.start()
    self.addCleanup(env.stop)
    handler = type('Handler', (_Handler,), {'files': {}, 'requests': []})
    handler.files['/adv_trained.zip'] = self.zip_bytes
    self.handler = handler
    self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    self.server.daemon_threads = True
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()
    self.url = f'http://127.0.0.1:{self.server.server_address[1]}/adv_trained.zip'
    # tempfile, not create_tempdir: that reads absl flags, unparsed under pytest.
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

  def tearDown(self):
    self.server.shutdown()
    self.server.server_close()
    self.thread.join(timeout=10)
    super().tearDown()

  def _check_checkpoint(self, prefix):
    self.assertEqual(resolve_checkpoint(prefix), prefix)
    self.assertEqual(resolve_checkpoint(os.path.dirname(prefix)), prefix)
    self.assertEqual(os.path.basename(prefix), 'checkpoint-99900')
    reader = tf.train.load_checkpoint(prefix)
    for name, value in VALUES.items():
      self.assertAllEqual(reader.get_tensor(name), value)

  def _run_binary(self, *args):
    return subprocess.run(
        [sys.executable, '-m', 'madry_models.fetch', *args],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))

  def test_library_downloads_extracts_then_uses_cache(self):
    first = fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10)
    self._check_checkpoint(first.checkpoint)
    self.assertEqual(first.source, self.url)
    self.assertEqual(first.zip_path, os.path.join(self.dir, 'downloads', f'{NAME}.zip'))
    self.assertEqual(first.sha256, hashlib.sha256(self.zip_bytes).hexdigest())
    self.assertEqual(first.kind, 'madry_mnist')
    self.assertStartsWith(first.checkpoint, os.path.join(self.dir, NAME) + os.sep)
    self.assertLen(self.handler.requests, 1)

    second = fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10)
    self.assertLen(self.handler.requests, 1)  # served from the cache
    self.assertIsNone(second.source)
    self.assertEqual(second.checkpoint, first.checkpoint)
    self._check_checkpoint(second.checkpoint)

  def test_binary_prints_checkpoint_last(self):
    result = self._run_binary(f'--model={NAME}', f'--dir={self.dir}', f'--url={self.url}')
    self.assertEqual(result.returncode, 0, result.stderr)
    lines = result.stdout.strip().splitlines()
    prefix = lines[-1]
    self.assertEqual(result.stdout.splitlines()[-1], prefix)
    self._check_checkpoint(prefix)
    self.assertIn(f'SHA-256: {hashlib.sha256(self.zip_bytes).hexdigest()}', result.stdout)
    self.assertIn(
        f'python -m igam_tf.export --model=madry_mnist --checkpoint={prefix} --export_dir=',
        result.stdout)
    self.assertLen(self.handler.requests, 1)

  def test_binary_offline_names_manual_path(self):
    url = f'http://127.0.0.1:{_closed_port()}/adv_trained.zip'
    start = time.monotonic()
    result = self._run_binary(f'--model={NAME}', f'--dir={self.dir}', f'--url={url}')
    self.assertLess(time.monotonic() - start, 60)
    self.assertNotEqual(result.returncode, 0)
    manual = os.path.join(self.dir, 'downloads', f'{NAME}.zip')
    self.assertIn(manual, result.stderr)
    self.assertIn(url, result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    self.assertFalse(os.path.exists(manual))

  def test_zip_placed_by_hand_works_offline(self):
    url = f'http://127.0.0.1:{_closed_port()}/adv_trained.zip'
    start = time.monotonic()
    with self.assertRaisesRegex(fetch_lib.FetchError, 'save it as') as raised:
      fetch_lib.fetch(NAME, self.dir, url=url, timeout=10)
    self.assertLess(time.monotonic() - start, 10)
    manual = fetch_lib.cache_path(self.dir, NAME)
    self.assertIn(manual, str(raised.exception))
    with open(manual, 'wb') as f:
      f.write(self.zip_bytes)
    result = fetch_lib.fetch(NAME, self.dir, url=url, timeout=10)
    self.assertIsNone(result.source)
    self._check_checkpoint(result.checkpoint)

  def test_release_urls_are_tried_in_order(self):
    dead = f'http://127.0.0.1:{_closed_port()}/adv_trained.zip'
    release = fetch_lib.Release((dead, self.url), 'models/adv_trained', 'madry_mnist')
    with mock.patch.dict(fetch_lib.RELEASES, {NAME: release}):
      result = fetch_lib.fetch(NAME, self.dir, timeout=10)
    self.assertEqual(result.source, self.url)
    self._check_checkpoint(result.checkpoint)

  def test_unanswered_request_times_out(self):
    with socket.socket() as listener:  # accepts connections, never answers
      listener.bind(('127.0.0.1', 0))
      listener.listen(1)
      url = f'http://127.0.0.1:{listener.getsockname()[1]}/adv_trained.zip'
      start = time.monotonic()
      with self.assertRaisesRegex(fetch_lib.FetchError, 'save it as'):
        fetch_lib.fetch(NAME, self.dir, url=url, timeout=1)
    self.assertLess(time.monotonic() - start, 10)

  def test_corrupt_download_is_not_cached(self):
    self.handler.files['/adv_trained.zip'] = b'<html>Not a zip</html>'
    manual = fetch_lib.cache_path(self.dir, NAME)
    with self.assertRaisesRegex(fetch_lib.FetchError, 'not a readable zip') as raised:
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10)
    self.assertIn(manual, str(raised.exception))
    self.assertFalse(os.path.exists(manual))

  def test_corrupt_cached_zip_is_rejected(self):
    manual = fetch_lib.cache_path(self.dir, NAME)
    os.makedirs(os.path.dirname(manual))
    with open(manual, 'wb') as f:
      f.write(self.zip_bytes[:len(self.zip_bytes) // 2])  # truncated
    with self.assertRaisesRegex(fetch_lib.FetchError, 'Rejected the cached zip') as raised:
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10)
    self.assertIn(manual, str(raised.exception))
    self.assertFalse(os.path.exists(manual))
    self.assertEmpty(self.handler.requests)
    # The next run downloads a good copy.
    self._check_checkpoint(fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10).checkpoint)

  def test_wrong_sha256_is_rejected(self):
    with self.assertRaisesRegex(fetch_lib.FetchError, 'SHA-256'):
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10, expected_sha256='0' * 64)
    self.assertFalse(os.path.exists(fetch_lib.cache_path(self.dir, NAME)))

  def test_path_traversal_is_rejected(self):
    self.handler.files['/adv_trained.zip'] = self.traversal_zip
    with self.assertRaisesRegex(fetch_lib.FetchError, 'outside'):
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10)
    for root in (self.dir, os.path.dirname(self.dir)):
      self.assertFalse(os.path.exists(os.path.join(root, 'evil.txt')))
    self.assertFalse(os.path.exists(os.path.join(self.dir, NAME, 'models', 'adv_trained')))
    self.assertFalse(os.path.exists(fetch_lib.cache_path(self.dir, NAME)))

  def test_unknown_model_lists_names(self):
    with self.assertRaisesRegex(fetch_lib.FetchError, 'cifar100_adv_trained'):
      fetch_lib.fetch('mnist_adversarial', self.dir, url=self.url)
    result = self._run_binary('--model=mnist_adversarial', f'--dir={self.dir}')
    self.assertNotEqual(result.returncode, 0)
    for name in fetch_lib.RELEASES:
      self.assertIn(name, result.stderr)
    self.assertEmpty(self.handler.requests)

  def test_release_table(self):
    for name, rel in fetch_lib.RELEASES.items():
      self.assertIn(rel.kind, ('madry_mnist', 'madry_cifar10'), name)
      self.assertTrue(all(u.startswith('https://') for u in rel.urls), name)
    self.assertIn('github.com', fetch_lib.RELEASES['cifar10_adv_trained'].urls[0])
    self.assertIn('dropbox.com', fetch_lib.RELEASES['cifar10_adv_trained'].urls[1])


if __name__ == '__main__':
  tf.test.main()
