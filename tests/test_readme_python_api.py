"""The README's Python API block, run exactly as the README shows it."""

import ast
import os
import re
import subprocess
import sys
import tempfile

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_api_block():
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  section = readme.split('\n## Python API\n', 1)[1].split('\n## ', 1)[0]
  blocks = re.findall(r'```python\n(.*?)```', section, re.DOTALL)
  assert len(blocks) == 1, f'expected one python block in "## Python API", got {len(blocks)}'
  return blocks[0]


class ReadmePythonApiTest(tf.test.TestCase):

  def test_the_block_trains_igam_and_evaluates_it_with_autoattack(self):
    code = python_api_block()
    self.assertIn('IGAM(', code)
    self.assertIn("'autoattack'", code)
    with tempfile.TemporaryDirectory() as folder:
      script = os.path.join(folder, 'readme_python_api.py')
      with open(script, 'w') as f:
        f.write(code)
      result = subprocess.run(
          [sys.executable, script], cwd=folder, capture_output=True, text=True, timeout=900,
          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3'))
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    accuracies = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    self.assertSameElements(accuracies, ['clean', 'fgsm', 'pgd20', 'autoattack', 'worst_case'])
    self.assertGreater(accuracies['clean'], 50.0)  # it learned the digits
    self.assertLessEqual(accuracies['autoattack'], accuracies['pgd20'])
    # Attacked, not broken to 0 (a sanity check of the run, not a claim of transfer).
    self.assertGreater(accuracies['autoattack'], 0.0)


if __name__ == '__main__':
  tf.test.main()
