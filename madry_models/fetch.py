"""Downloads a released MadryLab checkpoint and prints the path to pass on.

  python -m madry_models.fetch --model=mnist_adv_trained --dir=DIR

The release zip is cached as DIR/downloads/<model>.zip (a second run does not
download again) and extracted into DIR/<model>/, so releases that share a
folder name (MNIST and CIFAR-10 both ship `models/adv_trained`) do not
overwrite each other. Its SHA-256 is printed; MadryLab publishes none, so
nothing is checked unless --sha256 is given. The last line of stdout is the
checkpoint prefix, e.g. DIR/mnist_adv_trained/models/adv_trained/checkpoint-99900.

Without a network, download the zip by hand, save it at the cache path the
error message names, and rerun: the cached zip is used as is.
"""

import dataclasses
import hashlib
import os
import posixpath
import re
import socket
import sys
import zipfile
import zlib

from absl import app
from absl import flags
from absl import logging
import keras

from madry_models.checkpoints import CheckpointError
from madry_models.checkpoints import resolve_checkpoint


@dataclasses.dataclass(frozen=True)
class Release:
  urls: tuple  # tried in order
  folder: str | None  # where the zip puts the checkpoint; None: not known, found on extraction
  kind: str  # the `--model` of igam_tf.export


RELEASES = {
    'mnist_adv_trained': Release(
        ('https://github.com/MadryLab/mnist_challenge_models/raw/master/adv_trained.zip',),
        'models/adv_trained', 'madry_mnist'),
    'mnist_natural': Release(
        ('https://github.com/MadryLab/mnist_challenge_models/raw/master/natural.zip',),
        'models/natural', 'madry_mnist'),
    'mnist_secret': Release(
        ('https://github.com/MadryLab/mnist_challenge_models/raw/master/secret.zip',),
        'models/secret', 'madry_mnist'),
    'cifar10_adv_trained': Release(
        ('https://github.com/MadryProj/cifar10_challenge_models/raw/master/adv_trained.zip',
         'https://www.dropbox.com/s/g4b6ntrp8zrudbz/adv_trained.zip?dl=1'),
        'models/adv_trained', 'madry_cifar10'),
    'cifar10_natural': Release(
        ('https://github.com/MadryProj/cifar10_challenge_models/raw/master/natural.zip',
         'https://www.dropbox.com/s/cgzd5odqoojvxzk/natural.zip?dl=1'),
        'models/naturally_trained', 'madry_cifar10'),
    'cifar10_secret': Release(
        ('https://www.dropbox.com/s/ywc0hg8lr5ba8zd/secret.zip?dl=1',),
        'models/model_0', 'madry_cifar10'),
    # Shafahi et al.'s CIFAR-100 model: Madry's WRN layout with 100 classes.
    'cifar100_adv_trained': Release(
        ('https://www.dropbox.com/s/k644suezroi89sv/adv_trained_cifar100.zip?dl=1',),
        None, 'madry_cifar10'),
}


class FetchError(Exception):
  """A release could not be downloaded, checked, extracted or found."""


@dataclasses.dataclass(frozen=True)
class FetchResult:
  name: str
  kind: str
  zip_path: str
  sha256: str
  source: str | None  # the URL it was downloaded from; None when the cache was used
  extract_dir: str
  checkpoint: str  # the prefix to pass on


def release(name):
  """Returns the Release called `name`, or raises FetchError listing the names."""
  if name not in RELEASES:
    raise FetchError(f'Unknown model {name!r}; valid names: {", ".join(RELEASES)}.')
  return RELEASES[name]


def cache_path(directory, name):
  """Where the zip of release `name` is cached (and where to put it by hand)."""
  return os.path.join(_absolute(directory), 'downloads', f'{name}.zip')


def sha256_of(path):
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def export_command(result, export_dir):
  """The igam_tf.export command line for a fetched release."""
  return (f'python -m igam_tf.export --model={result.kind} '
          f'--checkpoint={result.checkpoint} --export_dir={export_dir}')


def fetch(name, directory, url=None, timeout=60.0, expected_sha256=None):
  """Downloads (or takes from the cache), checks and extracts a release.

  Args:
    name: a key of RELEASES.
    directory: holds the cache (downloads/) and the extracted release (<name>/).
    url: a URL to use instead of the release's own.
    timeout: seconds any one network operation may block.
    expected_sha256: if given, the zip must have this SHA-256.

  Returns:
    A FetchResult.

  Raises:
    FetchError: with a message that says what to do, for any failure.
  """
  rel = release(name)
  directory = _absolute(directory)
  zip_path = cache_path(directory, name)
  try:
    os.makedirs(os.path.dirname(zip_path), exist_ok=True)
  except OSError as e:
    raise FetchError(f'Cannot create {os.path.dirname(zip_path)}: {e}') from None
  # get_file quietly caches under /tmp/.keras instead when it cannot write here.
  if not os.access(os.path.dirname(zip_path), os.W_OK):
    raise FetchError(f'{os.path.dirname(zip_path)} is not writable.')

  urls = (url,) if url else rel.urls
  source = None
  if os.path.exists(zip_path):
    logging.info('Using the cached %s', zip_path)
    _check_zip(zip_path, expected_sha256, 'the cached zip')
  else:
    source = _download(zip_path, urls, timeout, expected_sha256)

  extract_dir = os.path.join(directory, name)
  names = _safe_extract(zip_path, extract_dir)
  folder = _checkpoint_folder(names, rel.folder, zip_path)
  try:
    checkpoint = resolve_checkpoint(os.path.join(extract_dir, *folder.split('/')))
  except CheckpointError as e:
    raise FetchError(f'{zip_path} was extracted, but: {e}') from None
  return FetchResult(name=name, kind=rel.kind, zip_path=zip_path, sha256=sha256_of(zip_path),
                     source=source, extract_dir=extract_dir, checkpoint=checkpoint)


def _absolute(directory):
  return os.path.abspath(os.path.expanduser(os.fspath(directory)))


def _download(zip_path, urls, timeout, expected_sha256):
  """Downloads the first URL that gives a good zip to zip_path; returns that URL."""
  failures = []
  for url in urls:
    # get_file's urlretrieve takes no timeout, but honours the socket default.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
      path = keras.utils.get_file(
          fname=os.path.basename(zip_path), origin=url,
          cache_dir=os.path.dirname(os.path.dirname(zip_path)), cache_subdir='downloads')
    except Exception as e:  # pylint: disable=broad-except
      # get_file raises a bare Exception for HTTP and URL errors (and removes
      # the partial file); timeouts and bad URLs come through as they are.
      failures.append(f'{url}: {e}')
      logging.warning('Download failed: %s: %s', url, e)
      continue
    finally:
      socket.setdefaulttimeout(previous)
    if os.path.abspath(path) != zip_path:
      raise FetchError(f'keras.utils.get_file saved {path}, not {zip_path}.')
    try:
      _check_zip(zip_path, expected_sha256, f'the download from {url}')
    except FetchError as e:
      failures.append(f'{url}: {e}')
      logging.warning('%s', e)
      continue
    return url
  raise FetchError(
      'Could not download a good zip from:\n' + '\n'.join(f'  {f}' for f in failures) +
      f'\nDownload the zip by hand from {" or ".join(urls)} and save it as\n'
      f'  {zip_path}\nthen rerun this command: it will use that file and need no network.')


def _set_aside(zip_path):
  """Moves a rejected zip out of the cache, so that it is not taken as good."""
  bad = zip_path + '.bad'
  os.replace(zip_path, bad)
  return bad


def _check_zip(zip_path, expected_sha256, what):
  """Raises FetchError, moving the file aside, if zip_path is not a sound zip."""
  problem = None
  digest = sha256_of(zip_path) if expected_sha256 else None
  if digest and digest != expected_sha256.lower():
    problem = f'its SHA-256 is {digest}, not {expected_sha256}'
  else:
    try:
      with zipfile.ZipFile(zip_path) as archive:
        corrupt = archive.testzip()  # reads every entry, checking its CRC
      if corrupt is not None:
        problem = f'its entry {corrupt!r} is corrupt'
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
      problem = f'it is not a readable zip file ({e})'
  if problem:
    bad = _set_aside(zip_path)
    raise FetchError(
        f'Rejected {what} at {zip_path}: {problem}. Moved it to {bad}; rerun to download '
        f'again, or save a good copy of the zip as {zip_path}.')


def _escapes(entry, root):
  parts = entry.replace('\\', '/').split('/')
  if entry.startswith(('/', '\\')) or re.match(r'[A-Za-z]:', entry) or '..' in parts:
    return True
  target = os.path.realpath(os.path.join(root, entry))
  return os.path.commonpath([target, root]) != root


def _safe_extract(zip_path, extract_dir):
  """Extracts the zip into extract_dir, refusing it whole if any entry escapes."""
  os.makedirs(extract_dir, exist_ok=True)
  root = os.path.realpath(extract_dir)
  with zipfile.ZipFile(zip_path) as archive:
    names = archive.namelist()
    escaping = [n for n in names if _escapes(n, root)]
    if escaping:
      bad = _set_aside(zip_path)
      raise FetchError(
          f'Rejected {zip_path}: its entries {escaping} would be written outside '
          f'{extract_dir}. Nothing was extracted; moved it to {bad}.')
    archive.extractall(extract_dir)
  return names


def _checkpoint_folder(names, expected, zip_path):
  """The zip folder (posix) holding the checkpoint: `expected`, or the only one."""
  folders = sorted({posixpath.dirname(n) for n in names
                    if posixpath.basename(n) == 'checkpoint' or n.endswith('.index')})
  if expected in folders:
    return expected
  if len(folders) == 1:
    return folders[0]
  raise FetchError(
      f'{zip_path} holds no single checkpoint folder'
      + (f' (expected {expected!r})' if expected else '')
      + f'; checkpoint folders found: {folders or "none"}.')


def define_flags():
  flags.DEFINE_enum('model', None, list(RELEASES), 'Which release to fetch.')
  flags.DEFINE_string('dir', None, 'Folder for the cache (downloads/) and the extracted release.')
  flags.DEFINE_string(
      'url', None, "A URL to download from instead of the release's own (unused once cached).")
  flags.DEFINE_float('timeout', 60.0, 'Seconds any one network operation may block.')
  flags.DEFINE_string('sha256', None, 'If given, the SHA-256 the zip must have.')
  flags.mark_flags_as_required(['model', 'dir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  try:
    result = fetch(f.model, f.dir, url=f.url, timeout=f.timeout, expected_sha256=f.sha256)
  except FetchError as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  print(f'Zip: {result.zip_path} '
        + (f'(downloaded from {result.source})' if result.source else '(cached)'))
  print(f'SHA-256: {result.sha256}')
  print(f'Extracted to: {result.extract_dir}')
  export_dir = os.path.join(_absolute(f.dir), 'exported', result.name)
  print(f'Export it with:\n  {export_command(result, export_dir)}')
  print('Checkpoint:')
  print(result.checkpoint)
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
