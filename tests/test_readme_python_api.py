"""The README's Python API blocks, each run exactly as the README shows it."""

import ast
import json
import os
import re
import subprocess
import sys
import tempfile

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_api_block(heading='Python API'):
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  section = readme.split(f'\n## {heading}\n', 1)[1].split('\n## ', 1)[0]
  blocks = re.findall(r'```python\n(.*?)```', section, re.DOTALL)
  assert len(blocks) == 1, f'expected one python block in "## {heading}", got {len(blocks)}'
  return blocks[0]


def run_block(code, folder):
  script = os.path.join(folder, 'readme_python_api.py')
  with open(script, 'w') as f:
    f.write(code)
  return subprocess.run(
      [sys.executable, script], cwd=folder, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3'))


class ReadmePythonApiTest(tf.test.TestCase):

  def test_the_block_trains_igam_and_evaluates_it_with_autoattack(self):
    code = python_api_block()
    self.assertIn('IGAM(', code)
    self.assertIn("'autoattack'", code)
    with tempfile.TemporaryDirectory() as folder:
      result = run_block(code, folder)
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    accuracies = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    self.assertSameElements(accuracies, ['clean', 'fgsm', 'pgd20', 'autoattack', 'worst_case'])
    self.assertGreater(accuracies['clean'], 50.0)  # it learned the digits
    self.assertLessEqual(accuracies['autoattack'], accuracies['pgd20'])
    # Attacked, not broken to 0 (a sanity check of the run, not a claim of transfer).
    self.assertGreater(accuracies['autoattack'], 0.0)


  def test_the_jobs_block_trains_a_teacher_and_an_igam_student_with_their_settings(self):
    code = python_api_block("Python API: the binaries' jobs")
    with tempfile.TemporaryDirectory() as folder:
      result = run_block(code, folder)
      self.assertEqual(result.returncode, 0, result.stderr[-3000:])
      runs = os.path.join(folder, 'runs', 'api')
      for name in ('source', 'teacher', 'igam'):
        self.assertTrue(os.path.exists(os.path.join(runs, name, 'model.json')), name)
      # Each run records its job's settings, as the binaries' runs do.
      with open(os.path.join(runs, 'igam', 'run_config.json')) as f:
        recorded = json.load(f)
      self.assertEqual(recorded['igam']['diff_weight'], 1e4)
      self.assertEqual(recorded['student']['architecture'], 'simple_cnn')
      self.assertEqual(recorded['data']['classes'], [5, 6, 7, 8, 9])
      self.assertEqual(recorded['train_steps'], 20)


if __name__ == '__main__':
  tf.test.main()
