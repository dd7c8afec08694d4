"""Tests madry_models.fetch against a fake release served on 127.0.0.1."""

import contextlib
import dataclasses
import hashlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from unittest import mock

import numpy as np
import tensorflow as tf

from madry_models import fetch as fetch_lib
from madry_models.checkpoints import resolve_checkpoint
from tests import release_server

NAME = 'mnist_adv_trained'
# The release table as shipped; setUp points NAME's git blob id at the served zip.
SHIPPED = dict(fetch_lib.RELEASES)
# MadryLab's published ids (git blob ids of the files in mnist_challenge_models).
PUBLISHED = {
    'mnist_adv_trained': '5522769558a570818f3e79bf465dd7f094f5783a',
    'mnist_natural': '464dce662b07446b47bcef3f93245afebdb4e197',
    'mnist_secret': 'd8c1cbea2b5ddd98fbe8b870b00865c60d51f316',
}
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
    return release_server.release_zip(folder, 'models/adv_trained', extra_entries)


def _blob_id(data):
  """What `git hash-object` prints for a file holding `data`."""
  return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


# What `python -m madry_models.fetch` runs (its `if __name__ == '__main__'`
# block), with the git blob id of release argv[1] set to argv[2] first.
_BINARY_WITH_BLOB_ID = """
import dataclasses, sys
from absl import app
from madry_models import fetch
name, blob = sys.argv.pop(1), sys.argv.pop(1)
fetch.RELEASES[name] = dataclasses.replace(fetch.RELEASES[name], git_blob_sha1=blob)
fetch.define_flags()
app.run(fetch.main)
"""


@contextlib.contextmanager
def _watch_network(port):
  """Records the socket timeout of each connect to 127.0.0.1:port, and mocks time.sleep.

  Yields (connect_timeouts, sleep): a retry loop would show as more than one
  connect, a wait between tries as a call of the sleep mock.
  """
  timeouts = []
  real_connect = socket.socket.connect

  def connect(sock, address):
    if address[1] == port:
      timeouts.append(sock.gettimeout())
    return real_connect(sock, address)

  with mock.patch.object(socket.socket, 'connect', connect), \
       mock.patch('time.sleep') as sleep:
    yield timeouts, sleep


class _DroppingListener:
  """Accepts connections on 127.0.0.1 and closes each at once, counting them."""

  def __init__(self):
    self.accepted = 0
    self._stop = threading.Event()
    self._socket = socket.socket()
    self._socket.bind(('127.0.0.1', 0))
    self._socket.listen(8)
    self._socket.settimeout(0.1)  # so that the loop sees _stop
    self.port = self._socket.getsockname()[1]
    self._thread = threading.Thread(target=self._serve, daemon=True)
    self._thread.start()

  def _serve(self):
    while not self._stop.is_set():
      try:
        connection, _ = self._socket.accept()
      except socket.timeout:
        continue
      self.accepted += 1  # before the close that the client sees
      connection.close()

  def close(self):
    self._stop.set()
    self._thread.join(timeout=10)
    self._socket.close()


def _closed_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class FetchTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.zip_bytes = _fake_release_zip()
    cls.traversal_zip = _fake_release_zip([('models/../../evil.txt', b'pwned')])

  def setUp(self):
    super().setUp()
    env = mock.patch.dict(os.environ, release_server.NO_PROXY)
    env.start()
    self.addCleanup(env.stop)
    self.server = release_server.ReleaseServer({'/adv_trained.zip': self.zip_bytes})
    self.handler = self.server.handler
    self.url = self.server.url('/adv_trained.zip')
    self.publish(self.zip_bytes)
    # tempfile, not create_tempdir: that reads absl flags, unparsed under pytest.
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)

  def tearDown(self):
    self.server.close()
    super().tearDown()

  def publish(self, data, name=NAME):
    """Makes _blob_id(data) the published git blob id of release `name` (in this process)."""
    release = dataclasses.replace(SHIPPED[name], git_blob_sha1=_blob_id(data))
    patch = mock.patch.dict(fetch_lib.RELEASES, {name: release})
    patch.start()
    self.addCleanup(patch.stop)

  def _assert_nothing_kept(self, *kept):
    """Only `kept` (paths) and an otherwise empty downloads/ are left in self.dir."""
    found = sorted(os.path.join(root, f) for root, _, files in os.walk(self.dir) for f in files)
    self.assertEqual(found, sorted(kept))
    self.assertEqual(os.listdir(self.dir), ['downloads'])

  def _error_line(self, result):
    """The binary's one-line ERROR message: its last line of stderr, and its only ERROR."""
    self.assertNotEqual(result.returncode, 0)
    self.assertNotIn('Traceback', result.stderr)
    lines = result.stderr.strip().splitlines()
    self.assertEqual([l for l in lines if l.startswith('ERROR:')], lines[-1:], result.stderr)
    return lines[-1]

  def _check_checkpoint(self, prefix):
    self.assertEqual(resolve_checkpoint(prefix), prefix)
    self.assertEqual(resolve_checkpoint(os.path.dirname(prefix)), prefix)
    self.assertEqual(os.path.basename(prefix), 'checkpoint-99900')
    reader = tf.train.load_checkpoint(prefix)
    for name, value in VALUES.items():
      self.assertAllEqual(reader.get_tensor(name), value)

  def _run_binary(self, *args, published=None):
    """Runs `python -m madry_models.fetch`; the release table as shipped unless
    published=(name, data) makes _blob_id(data) the git blob id of `name`."""
    if published:
      command = ['-c', _BINARY_WITH_BLOB_ID, published[0], _blob_id(published[1])]
    else:
      command = ['-m', 'madry_models.fetch']
    return subprocess.run(
        [sys.executable, *command, *args], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))

  def test_library_downloads_extracts_then_uses_cache(self):
    first = fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10)
    self._check_checkpoint(first.checkpoint)
    self.assertEqual(first.source, self.url)
    self.assertEqual(first.zip_path, os.path.join(self.dir, 'downloads', f'{NAME}.zip'))
    self.assertEqual(first.sha256, hashlib.sha256(self.zip_bytes).hexdigest())
    self.assertEqual(first.kind, 'madry_mnist')
    self.assertEqual(first.git_blob_sha1, _blob_id(self.zip_bytes))
    self.assertTrue(first.verified)
    self.assertStartsWith(first.verification, 'verified: git blob id')
    self.assertFalse(os.path.exists(first.zip_path + '.part'))
    self.assertStartsWith(first.checkpoint, os.path.join(self.dir, NAME) + os.sep)
    self.assertLen(self.handler.requests, 1)

    second = fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10)
    self.assertLen(self.handler.requests, 1)  # served from the cache
    self.assertIsNone(second.source)
    self.assertTrue(second.verified)  # the cached zip is checked too
    self.assertEqual(second.checkpoint, first.checkpoint)
    self._check_checkpoint(second.checkpoint)

  def test_binary_prints_checkpoint_last(self):
    result = self._run_binary(f'--model={NAME}', f'--dir={self.dir}', f'--url={self.url}',
                              published=(NAME, self.zip_bytes))
    self.assertEqual(result.returncode, 0, result.stderr)
    lines = result.stdout.strip().splitlines()
    prefix = lines[-1]
    self.assertEqual(result.stdout.splitlines()[-1], prefix)
    self._check_checkpoint(prefix)
    self.assertIn(f'SHA-256: {hashlib.sha256(self.zip_bytes).hexdigest()}', result.stdout)
    self.assertIn(f'Checksum: verified: git blob id {_blob_id(self.zip_bytes)} is the one '
                  'MadryLab publishes for adv_trained.zip', result.stdout)
    self.assertIn(
        f'python -m igam_tf.export --model=madry_mnist --checkpoint={prefix} --export_dir=',
        result.stdout)
    self.assertLen(self.handler.requests, 1)

  def test_binary_failed_download_names_manual_path(self):
    listener = _DroppingListener()  # every connection is closed unanswered
    self.addCleanup(listener.close)
    url = f'http://127.0.0.1:{listener.port}/adv_trained.zip'
    result = self._run_binary(f'--model={NAME}', f'--dir={self.dir}', f'--url={url}')
    # It gives up after one try: no retry loop.
    self.assertEqual(listener.accepted, 1)
    self.assertNotEqual(result.returncode, 0)
    manual = os.path.join(self.dir, 'downloads', f'{NAME}.zip')
    self.assertIn(manual, result.stderr)
    self.assertIn(url, result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    self._assert_nothing_kept()

  def test_zip_placed_by_hand_works_offline(self):
    port = _closed_port()
    url = f'http://127.0.0.1:{port}/adv_trained.zip'
    with _watch_network(port) as (connects, sleep):
      with self.assertRaisesRegex(fetch_lib.FetchError, 'save it as') as raised:
        fetch_lib.fetch(NAME, self.dir, url=url, timeout=10)
    # One refused connection, then the error: no retries, no waits between them.
    self.assertEqual(connects, [10])
    sleep.assert_not_called()
    manual = fetch_lib.cache_path(self.dir, NAME)
    self.assertIn(manual, str(raised.exception))
    with open(manual, 'wb') as f:
      f.write(self.zip_bytes)
    with _watch_network(port) as (connects, _):
      result = fetch_lib.fetch(NAME, self.dir, url=url, timeout=10)
    self.assertEmpty(connects)
    self.assertIsNone(result.source)
    self.assertTrue(result.verified)  # the hand-placed zip has the published id
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
      port = listener.getsockname()[1]
      url = f'http://127.0.0.1:{port}/adv_trained.zip'
      # Should the timeout not be applied, closing the listener ends the wait
      # (and the assertions below fail) rather than the test hanging.
      guard = threading.Timer(120, listener.close)
      guard.start()
      try:
        with _watch_network(port) as (connects, sleep):
          with self.assertRaisesRegex(fetch_lib.FetchError, '(?s)timed out.*save it as'):
            fetch_lib.fetch(NAME, self.dir, url=url, timeout=1)
      finally:
        guard.cancel()
    # One connection, whose socket gives up after `timeout` seconds; no retries or waits.
    self.assertEqual(connects, [1])
    sleep.assert_not_called()
    self._assert_nothing_kept()

  def test_corrupt_download_is_not_cached(self):
    self.handler.files['/adv_trained.zip'] = b'<html>Not a zip</html>'
    manual = fetch_lib.cache_path(self.dir, NAME)
    # allow_unverified: past the checksum, to the check that it is a sound zip.
    with self.assertRaisesRegex(fetch_lib.FetchError, 'not a readable zip') as raised:
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10, allow_unverified=True)
    self.assertIn(manual, str(raised.exception))
    self._assert_nothing_kept()

  def test_corrupt_cached_zip_is_rejected(self):
    manual = fetch_lib.cache_path(self.dir, NAME)
    os.makedirs(os.path.dirname(manual))
    with open(manual, 'wb') as f:
      f.write(self.zip_bytes[:len(self.zip_bytes) // 2])  # truncated
    with self.assertRaisesRegex(fetch_lib.FetchError,
                                'Rejected the cached zip .*not a readable zip') as raised:
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10, allow_unverified=True)
    self.assertIn(manual, str(raised.exception))
    self.assertFalse(os.path.exists(manual))
    self.assertEmpty(self.handler.requests)
    # The next run downloads a good copy.
    self._check_checkpoint(fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10).checkpoint)

  def test_wrong_sha256_is_rejected(self):
    with self.assertRaisesRegex(fetch_lib.FetchError, 'SHA-256'):
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10, expected_sha256='0' * 64)
    self._assert_nothing_kept()

  def test_path_traversal_is_rejected(self):
    self.handler.files['/adv_trained.zip'] = self.traversal_zip
    self.publish(self.traversal_zip)  # so that the zip gets past its checksum
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
    for name, rel in SHIPPED.items():
      self.assertIn(rel.kind, ('madry_mnist', 'madry_cifar10'), name)
      self.assertTrue(all(u.startswith('https://') for u in rel.urls), name)
      # Only the MNIST releases have a published checksum; none is made up.
      self.assertEqual(rel.git_blob_sha1, PUBLISHED.get(name), name)
    self.assertEqual(SHIPPED['mnist_secret'].file_name, 'secret.zip')
    self.assertEqual(SHIPPED['cifar10_secret'].file_name, 'secret.zip')
    self.assertIn('github.com', SHIPPED['cifar10_adv_trained'].urls[0])
    self.assertIn('dropbox.com', SHIPPED['cifar10_adv_trained'].urls[1])

  # Verification against the published git blob ids.

  def test_git_blob_sha1_is_git_hash_object(self):
    path = os.path.join(self.dir, 'file')
    for data, expected in ((b'', 'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'),
                           (b'hello\n', 'ce013625030ba8dba906f756967f9e9ca394464a'),
                           (self.zip_bytes, _blob_id(self.zip_bytes))):
      with open(path, 'wb') as f:
        f.write(data)
      self.assertEqual(fetch_lib.git_blob_sha1_of(path), expected)
      self.assertEqual(fetch_lib.digests(path),
                       (hashlib.sha256(data).hexdigest(), expected))
    if shutil.which('git'):
      self.assertEqual(
          subprocess.run(['git', 'hash-object', path], capture_output=True, text=True,
                         check=True).stdout.strip(),
          _blob_id(self.zip_bytes))

  def test_download_with_wrong_blob_id_is_refused(self):
    self.publish(self.traversal_zip)  # any other file's id
    with self.assertRaises(fetch_lib.ChecksumError) as raised:
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10)
    message = str(raised.exception)
    self.assertNotIn('\n', message)
    for part in (f'Rejected the download from {self.url}',
                 f'its git blob id is {_blob_id(self.zip_bytes)}',
                 f'MadryLab publishes {_blob_id(self.traversal_zip)} for adv_trained.zip',
                 fetch_lib.cache_path(self.dir, NAME), '--allow_unverified'):
      self.assertIn(part, message)
    self.assertLen(self.handler.requests, 1)
    self._assert_nothing_kept()

  def test_binary_refuses_download_with_wrong_blob_id(self):
    # The shipped table: the served zip cannot be MadryLab's adv_trained.zip.
    result = self._run_binary(f'--model={NAME}', f'--dir={self.dir}', f'--url={self.url}')
    line = self._error_line(result)
    self.assertEqual(result.returncode, 1)
    for part in (f'ERROR: Rejected the download from {self.url}',
                 f'its git blob id is {_blob_id(self.zip_bytes)}',
                 f'MadryLab publishes {PUBLISHED[NAME]} for adv_trained.zip',
                 f'nothing was saved as {fetch_lib.cache_path(self.dir, NAME)}',
                 'rerun to download it again', '--allow_unverified'):
      self.assertIn(part, line)
    self.assertNotIn('Checkpoint:', result.stdout)
    self.assertLen(self.handler.requests, 1)
    self._assert_nothing_kept()

  def test_binary_allow_unverified_uses_it_and_says_so(self):
    args = (f'--model={NAME}', f'--dir={self.dir}', f'--url={self.url}')
    result = self._run_binary(*args, '--allow_unverified')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn(
        f'Checksum: UNVERIFIED, used because of --allow_unverified: git blob id '
        f'{_blob_id(self.zip_bytes)} is not the {PUBLISHED[NAME]} MadryLab publishes for '
        'adv_trained.zip', result.stdout)
    self._check_checkpoint(result.stdout.splitlines()[-1])
    # Kept in the cache, it is checked again on every run: without the flag it is refused.
    result = self._run_binary(*args)
    line = self._error_line(result)
    manual = fetch_lib.cache_path(self.dir, NAME)
    self.assertIn(f'Rejected the cached zip {manual}', line)
    self.assertIn(f'Moved it to {manual}.bad', line)
    self.assertLen(self.handler.requests, 1)

  def test_binary_refuses_zip_placed_by_hand_with_wrong_blob_id(self):
    manual = fetch_lib.cache_path(self.dir, NAME)
    os.makedirs(os.path.dirname(manual))
    with open(manual, 'wb') as f:
      f.write(self.zip_bytes)
    offline = (f'--model={NAME}', f'--dir={self.dir}',
               f'--url=http://127.0.0.1:{_closed_port()}/adv_trained.zip')
    line = self._error_line(self._run_binary(*offline))
    for part in (f'ERROR: Rejected the cached zip {manual}',
                 f'its git blob id is {_blob_id(self.zip_bytes)}',
                 f'MadryLab publishes {PUBLISHED[NAME]} for adv_trained.zip',
                 f'Moved it to {manual}.bad: nothing was extracted',
                 f'move it back to {manual} and rerun with --allow_unverified'):
      self.assertIn(part, line)
    # Out of the cache but not lost: the file is kept, as it was, beside it.
    self._assert_nothing_kept(manual + '.bad')
    with open(manual + '.bad', 'rb') as f:
      self.assertEqual(f.read(), self.zip_bytes)
    # Doing as the message says uses it, still offline.
    os.replace(manual + '.bad', manual)
    result = self._run_binary(*offline, '--allow_unverified')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn('Checksum: UNVERIFIED', result.stdout)
    self.assertIn('(cached)', result.stdout)
    self._check_checkpoint(result.stdout.splitlines()[-1])
    self.assertEmpty(self.handler.requests)

  def test_zip_without_a_checkpoint_leaves_nothing_extracted(self):
    # A sound zip that is not a release, used with --allow_unverified: refused whole,
    # with no half-extracted folder, the zip kept beside the cache.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
      archive.writestr('readme.txt', b'not a checkpoint')
    manual = fetch_lib.cache_path(self.dir, NAME)
    os.makedirs(os.path.dirname(manual))
    with open(manual, 'wb') as f:
      f.write(buffer.getvalue())
    offline = (f'--model={NAME}', f'--dir={self.dir}',
               f'--url=http://127.0.0.1:{_closed_port()}/adv_trained.zip', '--allow_unverified')
    line = self._error_line(self._run_binary(*offline))
    for part in (f'ERROR: {manual} is not a usable {NAME} release',
                 'holds no single checkpoint folder', 'Nothing was extracted',
                 f'moved it to {manual}.bad'):
      self.assertIn(part, line)
    self._assert_nothing_kept(manual + '.bad')

  def test_zip_placed_by_hand_with_wrong_blob_id_is_refused(self):
    self.publish(self.traversal_zip)
    manual = fetch_lib.cache_path(self.dir, NAME)
    os.makedirs(os.path.dirname(manual))
    with open(manual, 'wb') as f:
      f.write(self.zip_bytes)
    with self.assertRaisesRegex(fetch_lib.ChecksumError, 'Rejected the cached zip'):
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10)
    self._assert_nothing_kept(manual + '.bad')
    self.assertEmpty(self.handler.requests)
    # allow_unverified takes the next download, saying that it is unverified.
    result = fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10, allow_unverified=True)
    self.assertFalse(result.verified)
    self.assertStartsWith(result.verification, 'UNVERIFIED')
    self.assertEqual(result.git_blob_sha1, _blob_id(self.zip_bytes))
    self._check_checkpoint(result.checkpoint)
    # It never excuses a --sha256 that does not match.
    shutil.rmtree(os.path.join(self.dir, NAME))
    with self.assertRaisesRegex(fetch_lib.ChecksumError, 'SHA-256'):
      fetch_lib.fetch(NAME, self.dir, url=self.url, timeout=10, allow_unverified=True,
                      expected_sha256='0' * 64)
    self._assert_nothing_kept(manual + '.bad')

  def test_mirror_with_wrong_blob_id_is_skipped(self):
    self.handler.files['/mirror.zip'] = self.traversal_zip
    mirror = self.url.replace('adv_trained.zip', 'mirror.zip')
    release = dataclasses.replace(fetch_lib.RELEASES[NAME], urls=(mirror, self.url))
    with mock.patch.dict(fetch_lib.RELEASES, {NAME: release}):
      result = fetch_lib.fetch(NAME, self.dir, timeout=10)
    self.assertEqual(self.handler.requests, ['/mirror.zip', '/adv_trained.zip'])
    self.assertEqual(result.source, self.url)
    self.assertTrue(result.verified)
    self._check_checkpoint(result.checkpoint)

  def test_release_without_published_checksum_is_reported_unverified(self):
    name = 'cifar10_adv_trained'  # the fake zip's layout is also this release's
    self.assertIsNone(fetch_lib.RELEASES[name].git_blob_sha1)
    sha256 = hashlib.sha256(self.zip_bytes).hexdigest()
    result = self._run_binary(f'--model={name}', f'--dir={self.dir}', f'--url={self.url}')
    self.assertEqual(result.returncode, 0, result.stderr)
    self.assertIn(f'Checksum: unverified: no checksum is published for {name} '
                  f'(adv_trained.zip); its SHA-256 is {sha256}', result.stdout)
    self._check_checkpoint(result.stdout.splitlines()[-1])
    # Pinned with --sha256 (expected_sha256), it is verified against that.
    pinned = fetch_lib.fetch(name, self.dir, url=self.url, expected_sha256=sha256.upper())
    self.assertTrue(pinned.verified)
    self.assertIsNone(pinned.source)
    self.assertEqual(pinned.verification, f'SHA-256 {sha256} matches the one given')


if __name__ == '__main__':
  tf.test.main()
