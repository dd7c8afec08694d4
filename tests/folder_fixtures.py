"""What a test compares to show that a run left a folder as it was."""

import os


def folder_contents(folder):
  """{relative path: bytes} of every file under `folder` (None for each folder)."""
  contents = {}
  for root, folders, names in os.walk(folder):
    for name in folders:
      contents[os.path.relpath(os.path.join(root, name), folder)] = None
    for name in names:
      with open(os.path.join(root, name), 'rb') as f:
        contents[os.path.relpath(os.path.join(root, name), folder)] = f.read()
  return contents
