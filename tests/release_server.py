"""Release zips laid out as MadryLab's, served over HTTP on 127.0.0.1 (test helper).

Shared by tests/test_fetch.py and tests/test_readme_commands.py: `release_zip` packs a
checkpoint folder the way a release does (e.g. models/adv_trained/checkpoint-99900.*
with the folder entries), `ReleaseServer` serves {path: bytes} from a thread and
records each request.
"""

import http.server
import io
import os
import threading
import zipfile

# Never send 127.0.0.1 through a proxy that the environment may name.
NO_PROXY = {'no_proxy': '127.0.0.1,localhost', 'NO_PROXY': '127.0.0.1,localhost'}


def release_zip(checkpoint_folder, release_folder='models/adv_trained', extra_entries=()):
  """The bytes of a zip holding every file of `checkpoint_folder` under `release_folder`
  (with an entry for each of its folders, as the releases have), then `extra_entries`
  ((name, bytes) pairs written as given, e.g. a path that escapes the zip)."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as archive:
    parts = release_folder.strip('/').split('/')
    for depth in range(1, len(parts) + 1):
      archive.writestr('/'.join(parts[:depth]) + '/', b'')
    for entry in sorted(os.listdir(checkpoint_folder)):
      archive.write(os.path.join(checkpoint_folder, entry), '/'.join(parts + [entry]))
    for name, data in extra_entries:
      archive.writestr(zipfile.ZipInfo(name), data)
  return buffer.getvalue()


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


class ReleaseServer:
  """Serves `files` ({url path: bytes}; change it at will) on 127.0.0.1 until close().

  `handler.files` and `handler.requests` (the paths asked for, in order) belong to this
  server alone.
  """

  def __init__(self, files=None):
    self.handler = type('Handler', (_Handler,), {'files': dict(files or {}), 'requests': []})
    self.server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), self.handler)
    self.server.daemon_threads = True
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()

  def url(self, path):
    return f'http://127.0.0.1:{self.server.server_address[1]}{path}'

  def close(self):
    self.server.shutdown()
    self.server.server_close()
    self.thread.join(timeout=10)
