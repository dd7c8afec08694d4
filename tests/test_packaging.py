"""`pip install .` gives both packages and a console script per binary (pyproject.toml)."""

import os
import re
import shutil
import subprocess
import sys
import tempfile

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each `python -m X` binary of the README, by its console script.
SCRIPTS = {
    'igam-train-igam': 'igam_tf.train_igam', 'igam-finetune-teacher': 'igam_tf.finetune_teacher',
    'igam-train-baseline': 'igam_tf.train_baseline', 'igam-evaluate': 'igam_tf.evaluate',
    'igam-visualize': 'igam_tf.visualize', 'igam-export': 'igam_tf.export',
    'igam-demo': 'igam_tf.demo', 'madry-fetch': 'madry_models.fetch',
}


class PipInstallTest(tf.test.TestCase):

  def test_pip_install_gives_the_packages_and_console_scripts(self):
    root = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    # A copy: pip builds in the source folder, which must stay as the clone has it.
    source = os.path.join(root, 'source')
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        '.git', 'runs', 'models', 'results', '__pycache__', '.benchmarks'))
    target = os.path.join(root, 'installed')
    # Offline: the dependencies are those already installed, setuptools included.
    install = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-build-isolation',
         '--no-index', '--quiet', '--target', target, source],
        capture_output=True, text=True, timeout=300)
    self.assertEqual(install.returncode, 0, install.stderr[-3000:])
    self.assertTrue(os.path.isfile(os.path.join(target, 'igam_tf', 'igam.py')))
    self.assertTrue(os.path.isfile(os.path.join(target, 'igam_tf', 'attacks', 'pgd.py')))
    self.assertTrue(os.path.isfile(os.path.join(target, 'madry_models', 'resnet.py')))
    self.assertSameElements(
        [name for name in os.listdir(os.path.join(target, 'bin'))
         if name.startswith(('igam-', 'madry-'))], SCRIPTS)
    # Every script is its binary: each refuses a run without its required flags in one
    # line naming one, outside the repository (the installed copy, not the clone).
    for script, module in SCRIPTS.items():
      with self.subTest(script):
        with open(os.path.join(target, 'bin', script)) as f:
          self.assertIn(f'from {module} import run', f.read())
    result = subprocess.run(
        [os.path.join(target, 'bin', 'igam-export')], cwd=root, capture_output=True,
        text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=target, TF_CPP_MIN_LOG_LEVEL='3'))
    self.assertEqual(result.returncode, 1, result.stderr[-3000:])
    self.assertRegex(result.stderr, re.compile(r'^ERROR: .*--model', re.M))
    self.assertNotIn('Traceback', result.stderr)
    # Its --help is the binary's: its description and its flags.
    result = subprocess.run(
        [os.path.join(target, 'bin', 'igam-train-igam'), '--help'], cwd=root,
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=target, TF_CPP_MIN_LOG_LEVEL='3'))
    self.assertIn('Algorithm 1', result.stdout)
    self.assertIn('--diff_weight', result.stdout)


if __name__ == '__main__':
  tf.test.main()
