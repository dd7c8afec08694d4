"""Keeps BUILD honest (Bazel cannot fetch its rules offline here) and the layers one-way.

BUILD is Starlark, which for our plain target lists is valid Python: it is run
with stand-ins for the rules that record every target.
"""

import ast
import os
import re

from absl.testing import absltest

import igam_tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('igam_tf', 'madry_models')
FOLDERS = PACKAGES + ('benchmarks', 'tests')


def read_build_targets():
  targets = {}

  def rule(kind):
    def record(name, srcs=(), deps=(), data=(), main=None, **unused_kwargs):
      if name in targets:
        raise AssertionError(f'BUILD defines target {name!r} twice')
      targets[name] = dict(kind=kind, srcs=list(srcs), deps=list(deps), data=list(data),
                           main=main)
    return record

  scope = {k: rule(k) for k in ('py_library', 'py_binary', 'py_test')}
  scope.update(load=lambda *args: None, package=lambda **kwargs: None)
  with open(os.path.join(REPO, 'BUILD')) as f:
    exec(compile(f.read(), 'BUILD', 'exec'), scope)  # pylint: disable=exec-used
  return targets


def project_files():
  """Every .py file in FOLDERS and their packages (folders with an __init__.py)."""
  files = []
  for folder in FOLDERS:
    for root, dirs, names in os.walk(os.path.join(REPO, folder)):
      dirs[:] = sorted(d for d in dirs if os.path.exists(os.path.join(root, d, '__init__.py')))
      relative = os.path.relpath(root, REPO).replace(os.sep, '/')
      files.extend(f'{relative}/{name}' for name in sorted(names) if name.endswith('.py'))
  return files


def is_binary(path):
  with open(os.path.join(REPO, path)) as f:
    text = f.read()
  return (('app.run(' in text or 'run_binary(' in text)
          and "if __name__ == '__main__':" in text)


def module_of(path):
  module = path[:-len('.py')].replace('/', '.')
  return module[:-len('.__init__')] if module.endswith('.__init__') else module


def imported_project_modules(path):
  """Project modules that `path` imports (`from pkg import name` counts as pkg.name if it
  exists, else as pkg)."""
  with open(os.path.join(REPO, path)) as f:
    tree = ast.parse(f.read(), path)
  known = {module_of(p) for p in project_files()}
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in known
               else node.module for alias in node.names]
    else:
      continue
    found.update(name for name in names if name in known)
  found.discard(module_of(path))
  return found


class BuildFileTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.targets = read_build_targets()
    self.owner = {}
    for name, target in self.targets.items():
      for src in target['srcs']:
        self.assertNotIn(src, self.owner, f'{src} is in two BUILD targets')
        self.owner[src] = name

  def test_every_named_file_exists(self):
    for name, target in self.targets.items():
      for src in target['srcs'] + target['data'] + ([target['main']] if target['main'] else []):
        if not src.startswith(':'):
          self.assertTrue(os.path.exists(os.path.join(REPO, src)),
                          f'BUILD target {name!r} names {src}, which does not exist')

  def test_every_dependency_is_a_target(self):
    for name, target in self.targets.items():
      for dep in target['deps'] + [d for d in target['data'] if d.startswith(':')]:
        self.assertIn(dep.lstrip(':'), self.targets, f'{name!r} depends on unknown {dep}')

  def test_every_module_binary_and_test_has_its_target(self):
    for path in project_files():
      self.assertIn(path, self.owner, f'{path} is in no BUILD target')
      kind = self.targets[self.owner[path]]['kind']
      base = os.path.basename(path)
      if path.startswith('tests/') and base.startswith('test_'):
        self.assertEqual(kind, 'py_test', f'{path} needs a py_test target')
      elif is_binary(path):
        self.assertEqual(kind, 'py_binary', f'{path} is a binary and needs a py_binary target')
      else:
        self.assertEqual(kind, 'py_library', f'{path} needs a py_library target')

  def test_dependencies_cover_imports(self):
    for path, name in self.owner.items():
      deps = {d.lstrip(':') for d in self.targets[name]['deps']}
      for module in imported_project_modules(path):
        imported = module.replace('.', '/')
        imported = imported + '.py' if os.path.exists(os.path.join(REPO, imported + '.py')) \
            else imported + '/__init__.py'
        needed = self.owner.get(imported)
        if needed != name:
          self.assertIn(needed, deps, f'{path} imports {module}: add :{needed} to deps of {name!r}')


class LayeringTest(absltest.TestCase):
  """binaries -> igam_tf library -> madry_models, and no cycles."""

  def test_madry_models_never_imports_igam_tf(self):
    for path in project_files():
      if path.startswith('madry_models/'):
        offending = [m for m in imported_project_modules(path) if m.startswith('igam_tf')]
        self.assertEmpty(offending, f'{path} imports {offending}')

  def test_library_modules_never_import_binaries(self):
    binaries = {module_of(p) for p in project_files() if is_binary(p)}
    for path in project_files():
      if not path.startswith('tests/'):
        offending = imported_project_modules(path) & binaries
        self.assertEmpty(offending, f'{path} imports binaries {offending}')

  def test_binaries_are_the_verbs_igam_tf_lists_and_only_they_read_flags(self):
    binaries = {module_of(p) for p in project_files()
                if p.startswith(PACKAGES) and is_binary(p)}
    self.assertEqual(binaries, {f'igam_tf.{verb}' for verb in igam_tf.BINARIES} |
                     {'madry_models.fetch'})
    for path in project_files():
      if path.startswith(PACKAGES) and module_of(path) not in binaries:
        with open(os.path.join(REPO, path)) as f:
          reads_flags = re.search(r'^from absl import .*\bflags\b', f.read(), re.M)
        self.assertTrue(not reads_flags or path == 'igam_tf/flag_groups.py',
                        f'{path} is a library module and imports absl flags')

  def test_no_import_cycles(self):
    graph = {module_of(p): imported_project_modules(p)
             for p in project_files() if not p.startswith('tests/')}
    state = {}

    def visit(module, stack):
      state[module] = 'open'
      for dep in graph.get(module, ()):
        if state.get(dep) == 'open':
          self.fail(f'import cycle: {" -> ".join(stack + [module, dep])}')
        if dep not in state:
          visit(dep, stack + [module])
      state[module] = 'done'

    for module in graph:
      if module not in state:
        visit(module, [])


if __name__ == '__main__':
  absltest.main()
