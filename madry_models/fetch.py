"""Downloads a released MadryLab checkpoint and prints the path to pass on.

  python -m madry_models.fetch --model=mnist_adv_trained --dir=DIR

The release zip is cached as DIR/downloads/<model>.zip (a second run does not
download again) and extracted into DIR/<model>/, so releases that share a
folder name (MNIST and CIFAR-10 both ship `models/adv_trained`) do not
overwrite each other. The last line of stdout is the checkpoint prefix, e.g.
DIR/mnist_adv_trained/models/adv_trained/checkpoint-99900.

Verification: the MNIST releases are files of a git repository, so their git
blob ids (SHA-1 of b"blob <size>\\0" + the bytes, as `git hash-object` computes)
are published checksums. Every zip of mnist_adv_trained, mnist_natural and
mnist_secret, downloaded or found in the cache, must have its release's id, or
it is refused (a download is deleted, a cached zip moved aside to .bad, nothing
is extracted); --allow_unverified uses such a zip anyway, saying so. The CIFAR
releases have no published checksum: their SHA-256 is printed as unverified
(pin it with --sha256 to check it on later runs).

Without a network, download the zip by hand, save it at the cache path the
error message names, and rerun: the cached zip is checked like a download.
"""

import dataclasses
import hashlib
import os
import posixpath
import re
import runpy
import shutil
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
  # The published git blob id of the zip (in MadryLab's repository); None: none published.
  git_blob_sha1: str | None = None

  @property
  def file_name(self):
    """The release's own file name, e.g. adv_trained.zip."""
    return posixpath.basename(self.urls[0].split('?')[0])


# The MNIST blob ids are those of the files in github.com/MadryLab/mnist_challenge_models.
RELEASES = {
    'mnist_adv_trained': Release(
        ('https://github.com/MadryLab/mnist_challenge_models/raw/master/adv_trained.zip',),
        'models/adv_trained', 'madry_mnist', '5522769558a570818f3e79bf465dd7f094f5783a'),
    'mnist_natural': Release(
        ('https://github.com/MadryLab/mnist_challenge_models/raw/master/natural.zip',),
        'models/natural', 'madry_mnist', '464dce662b07446b47bcef3f93245afebdb4e197'),
    'mnist_secret': Release(
        ('https://github.com/MadryLab/mnist_challenge_models/raw/master/secret.zip',),
        'models/secret', 'madry_mnist', 'd8c1cbea2b5ddd98fbe8b870b00865c60d51f316'),
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


class ChecksumError(FetchError):
  """A zip does not have the checksum it must have."""


@dataclasses.dataclass(frozen=True)
class FetchResult:
  name: str
  kind: str
  zip_path: str
  sha256: str
  git_blob_sha1: str  # the zip's git blob id, comparable with Release.git_blob_sha1
  verified: bool  # it has the release's published git blob id, or the expected_sha256 given
  verification: str  # one line for people: what was checked, or that nothing could be
  source: str | None  # the URL it was downloaded from; None when the cache was used
  extract_dir: str
  checkpoint: str  # the prefix to pass on


@dataclasses.dataclass(frozen=True)
class _Check:
  sha256: str
  git_blob_sha1: str
  verified: bool
  verification: str


def release(name):
  """Returns the Release called `name`, or raises FetchError listing the names."""
  if name not in RELEASES:
    raise FetchError(f'Unknown model {name!r}; valid names: {", ".join(RELEASES)}.')
  return RELEASES[name]


def cache_path(directory, name):
  """Where the zip of release `name` is cached (and where to put it by hand)."""
  return os.path.join(_absolute(directory), 'downloads', f'{name}.zip')


def digests(path):
  """Returns (SHA-256, git blob id) of the file at path, reading it once.

  The git blob id is what `git hash-object` prints: the SHA-1 of
  b'blob <size in bytes>\\0' followed by the file's bytes.
  """
  sha256 = hashlib.sha256()
  blob = hashlib.sha1(b'blob %d\0' % os.path.getsize(path))
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      sha256.update(block)
      blob.update(block)
  return sha256.hexdigest(), blob.hexdigest()


def sha256_of(path):
  return digests(path)[0]


def git_blob_sha1_of(path):
  return digests(path)[1]


def export_command(result, export_dir):
  """The igam_tf.export command line for a fetched release."""
  return (f'python -m igam_tf.export --model={result.kind} '
          f'--checkpoint={result.checkpoint} --export_dir={export_dir}')


def fetch(name, directory, url=None, timeout=60.0, expected_sha256=None,
          allow_unverified=False):
  """Downloads (or takes from the cache), checks and extracts a release.

  A release with a published git blob id (the MNIST ones) is checked against it
  whether it is downloaded or found in the cache (e.g. placed there by hand).

  Args:
    name: a key of RELEASES.
    directory: holds the cache (downloads/) and the extracted release (<name>/).
    url: a URL to use instead of the release's own.
    timeout: seconds any one network operation may block.
    expected_sha256: if given, the zip must have this SHA-256.
    allow_unverified: use a zip whose git blob id is not the release's published
      one instead of refusing it (the result says so); expected_sha256 still holds.

  Returns:
    A FetchResult.

  Raises:
    ChecksumError: the zip does not have its published git blob id or
      expected_sha256; a download is deleted, a cached zip moved aside to .bad.
    FetchError: with a message that says what to do, for any other failure.
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
    check = _check_zip(zip_path, zip_path, name, expected_sha256, allow_unverified, None)
  else:
    source, check = _download(zip_path, urls, timeout, name, expected_sha256, allow_unverified)
  if not check.verified:
    logging.warning('%s: %s', zip_path, check.verification)

  # Extracted aside and moved into place only once a checkpoint is found in it, so a
  # zip that is not a release leaves no half-made folder (and keeps a good one).
  extract_dir = os.path.join(directory, name)
  staging = extract_dir + '.partial'
  shutil.rmtree(staging, ignore_errors=True)
  names = _safe_extract(zip_path, staging)
  try:
    folder = _checkpoint_folder(names, rel.folder)
    resolve_checkpoint(os.path.join(staging, *folder.split('/')))
  except (FetchError, CheckpointError) as e:
    shutil.rmtree(staging, ignore_errors=True)
    bad = _set_aside(zip_path)
    raise FetchError(f'{zip_path} is not a usable {name} release: {e} Nothing was '
                     f'extracted; moved it to {bad}.') from None
  shutil.rmtree(extract_dir, ignore_errors=True)
  os.replace(staging, extract_dir)
  checkpoint = resolve_checkpoint(os.path.join(extract_dir, *folder.split('/')))
  return FetchResult(name=name, kind=rel.kind, zip_path=zip_path, sha256=check.sha256,
                     git_blob_sha1=check.git_blob_sha1, verified=check.verified,
                     verification=check.verification, source=source,
                     extract_dir=extract_dir, checkpoint=checkpoint)


def _absolute(directory):
  return os.path.abspath(os.path.expanduser(os.fspath(directory)))


def _remove(path):
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def _download(zip_path, urls, timeout, name, expected_sha256, allow_unverified):
  """Downloads the first URL that gives a good zip to zip_path.

  Each download goes to zip_path + '.part' and is moved to zip_path only once
  it has passed _check_zip, so the cache never holds an unchecked download.

  Returns:
    (the URL, its _Check).
  """
  part = zip_path + '.part'
  failures = []  # (url, exception)
  for i, url in enumerate(urls):
    _remove(part)  # get_file would take a stale partial download as done
    # get_file's urlretrieve takes no timeout, but honours the socket default.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
      path = keras.utils.get_file(
          fname=os.path.basename(part), origin=url, force_download=True,
          cache_dir=os.path.dirname(os.path.dirname(part)), cache_subdir='downloads')
    except Exception as e:  # pylint: disable=broad-except
      # get_file raises a bare Exception for HTTP and URL errors (and removes
      # the partial file); timeouts and bad URLs come through as they are.
      failures.append((url, e))
      if i + 1 < len(urls):
        logging.warning('Download failed: %s: %s; trying the next URL.', url, e)
      continue
    finally:
      socket.setdefaulttimeout(previous)
    if os.path.abspath(path) != part:
      _remove(path)
      raise FetchError(f'keras.utils.get_file saved {path}, not {part}.')
    try:
      check = _check_zip(part, zip_path, name, expected_sha256, allow_unverified, url)
    except FetchError as e:
      failures.append((url, e))
      if i + 1 < len(urls):
        logging.warning('%s Trying the next URL.', e)
      continue
    os.replace(part, zip_path)
    return url, check
  if len(failures) == 1 and isinstance(failures[0][1], ChecksumError):
    raise failures[0][1]  # already says what to do, on one line
  raise FetchError(
      'Could not download a good zip from:\n'
      + '\n'.join(f'  {url}: {e}' for url, e in failures) +
      f'\nDownload the zip by hand from {" or ".join(urls)} and save it as\n'
      f'  {zip_path}\nthen rerun this command: it will use that file and need no network.')


def _set_aside(zip_path):
  """Moves a rejected zip out of the cache, so that it is not taken as good."""
  bad = zip_path + '.bad'
  os.replace(zip_path, bad)
  return bad


def _check_zip(path, zip_path, name, expected_sha256, allow_unverified, source):
  """Checks the zip at path against its checksums, then that it is a sound zip.

  Args:
    path: the file to check.
    zip_path: the release's cache path.
    name: the release's name, a key of RELEASES.
    expected_sha256: None, or the SHA-256 the zip must have.
    allow_unverified: accept a zip whose git blob id is not the published one.
    source: the URL that path was just downloaded from (path is then deleted if
      rejected), or None when path is the cached zip (then moved aside to .bad).

  Returns:
    A _Check.

  Raises:
    ChecksumError or FetchError: one line naming the file, what is wrong with it,
      what became of it and what to do.
  """
  rel = release(name)
  sha256, blob = digests(path)
  what = f'the download from {source}' if source else f'the cached zip {zip_path}'

  def reject(problem, error=FetchError, override=''):
    if source:
      _remove(path)
      done = f'Deleted it: nothing was saved as {zip_path} or extracted'
      again = 'rerun to download it again'
    else:
      bad = _set_aside(path)
      done = f'Moved it to {bad}: nothing was extracted'
      again = f'rerun to download it again (or save a good copy as {zip_path})'
    raise error(f'Rejected {what}: {problem}. {done}; {again}{override}.')

  if expected_sha256 and sha256 != expected_sha256.strip().lower():
    reject(f'its SHA-256 is {sha256}, not {expected_sha256}', ChecksumError)
  sha256_note = '; its SHA-256 matches the one given' if expected_sha256 else ''
  if rel.git_blob_sha1 is None:
    verified = bool(expected_sha256)
    verification = (
        f'SHA-256 {sha256} matches the one given' if verified else
        f'unverified: no checksum is published for {name} ({rel.file_name}); its SHA-256 '
        f'is {sha256} (compare it with a copy you trust, or pin it with --sha256)')
  elif blob == rel.git_blob_sha1:
    verified = True
    verification = (f'verified: git blob id {blob} is the one MadryLab publishes for '
                    f'{rel.file_name}{sha256_note}')
  elif allow_unverified:
    verified = False
    verification = (f'UNVERIFIED, used because of --allow_unverified: git blob id {blob} is '
                    f'not the {rel.git_blob_sha1} MadryLab publishes for {rel.file_name}')
  else:
    if source:
      override = ', or rerun with --allow_unverified to use an unverified download anyway'
    else:
      override = (f', or, to use that file unverified anyway, move it back to {zip_path} '
                  'and rerun with --allow_unverified')
    reject(f'its git blob id is {blob}, but MadryLab publishes {rel.git_blob_sha1} for '
           f'{rel.file_name} (a different or damaged file)', ChecksumError, override)

  problem = None
  try:
    with zipfile.ZipFile(path) as archive:
      corrupt = archive.testzip()  # reads every entry, checking its CRC
    if corrupt is not None:
      problem = f'its entry {corrupt!r} is corrupt'
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
    problem = f'it is not a readable zip file ({e})'
  if problem:
    reject(problem)
  return _Check(sha256=sha256, git_blob_sha1=blob, verified=verified,
                verification=verification)


def _escapes(entry, root):
  parts = entry.replace('\\', '/').split('/')
  if entry.startswith(('/', '\\')) or re.match(r'[A-Za-z]:', entry) or '..' in parts:
    return True
  target = os.path.realpath(os.path.join(root, entry))
  return os.path.commonpath([target, root]) != root


def _safe_extract(zip_path, extract_dir):
  """Extracts the zip into extract_dir, refusing it whole if any entry escapes."""
  root = os.path.realpath(extract_dir)
  with zipfile.ZipFile(zip_path) as archive:
    names = archive.namelist()
    escaping = [n for n in names if _escapes(n, root)]
    if escaping:
      bad = _set_aside(zip_path)
      raise FetchError(
          f'Rejected {zip_path}: its entries {escaping} would be written outside '
          f'{extract_dir}. Nothing was extracted; moved it to {bad}.')
    os.makedirs(extract_dir, exist_ok=True)
    archive.extractall(extract_dir)
  return names


def _checkpoint_folder(names, expected):
  """The zip folder (posix) holding the checkpoint: `expected`, or the only one."""
  folders = sorted({posixpath.dirname(n) for n in names
                    if posixpath.basename(n) == 'checkpoint' or n.endswith('.index')})
  if expected in folders:
    return expected
  if len(folders) == 1:
    return folders[0]
  raise FetchError(
      f'it holds no single checkpoint folder'
      + (f' (expected {expected!r})' if expected else '')
      + f'; checkpoint folders found: {folders or "none"}.')


def define_flags():
  flags.DEFINE_enum('model', None, list(RELEASES), 'Which release to fetch.')
  flags.DEFINE_string('dir', None, 'Folder for the cache (downloads/) and the extracted release.')
  flags.DEFINE_string(
      'url', None, "A URL to download from instead of the release's own (unused once cached).")
  flags.DEFINE_float('timeout', 60.0, 'Seconds any one network operation may block.')
  flags.DEFINE_string('sha256', None, 'If given, the SHA-256 the zip must have.')
  flags.DEFINE_boolean(
      'allow_unverified', False,
      "Use a zip whose git blob id is not the one MadryLab publishes for the release "
      "(the MNIST ones) instead of refusing it; the output says it is unverified.")
  flags.mark_flags_as_required(['model', 'dir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  try:
    result = fetch(f.model, f.dir, url=f.url, timeout=f.timeout, expected_sha256=f.sha256,
                   allow_unverified=f.allow_unverified)
  except FetchError as e:
    print(f'ERROR: {e}', file=sys.stderr)
    return 1
  print(f'Zip: {result.zip_path} '
        + (f'(downloaded from {result.source})' if result.source else '(cached)'))
  print(f'SHA-256: {result.sha256}')
  print(f'Git blob id: {result.git_blob_sha1}')
  print(f'Checksum: {result.verification}')
  print(f'Extracted to: {result.extract_dir}')
  export_dir = os.path.join(_absolute(f.dir), 'exported', result.name)
  print(f'Export it with:\n  {export_command(result, export_dir)}')
  print('Checkpoint:')
  print(result.checkpoint)
  return 0


def run():
  """`python -m madry_models.fetch`, also the console script `madry-fetch`
  (pyproject.toml)."""
  if __name__ != '__main__':  # the console script: run as `python -m` does (its --help)
    runpy.run_module(__name__, run_name='__main__', alter_sys=True)
    return
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
