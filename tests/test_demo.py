"""The demo over several seeds, through its binary and its flagfile (flags/demo.cfg, made
small by TINY): a seed without results runs, a seed with finished results is reused, and
the summary's mean and range come from their reports."""

import json
import os
import subprocess
import sys
import tempfile

import tensorflow as tf

from igam_tf import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--teacher_steps=2', '--finetune_steps=2', '--student_steps=2', '--batch_size=8',
        '--attacks=clean,fgsm', '--masking_examples=0']


def run_demo(output_dir, *flags):
  return subprocess.run([sys.executable, '-m', 'igam_tf.demo', '--flagfile=flags/demo.cfg',
                         f'--output_dir={output_dir}', *TINY, *flags], cwd=REPO,
                        capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))


class DemoSeedsTest(tf.test.TestCase):

  def test_summarize_seeds(self):
    reports = {0: {'igam': {'clean': 90.0, 'fgsm': 40.0}, 'settings': {}, 'warnings': []},
               1: {'igam': {'clean': 94.0, 'fgsm': 50.0}, 'only_here': {'clean': 1.0}}}
    self.assertEqual(demo.summarize_seeds(reports), {'igam': {
        'clean': {'mean': 92.0, 'min': 90.0, 'max': 94.0},
        'fgsm': {'mean': 45.0, 'min': 40.0, 'max': 50.0}}})

  def test_seeds_run_each_seed_and_summarize_them(self):
    output = tempfile.mkdtemp()
    first = run_demo(output, '--seeds=3')
    self.assertEqual(first.returncode, 0, first.stderr[-3000:])
    with open(os.path.join(output, 'seed_3', 'results.json')) as f:
      reports = {3: json.load(f)}
    self.assertEqual(reports[3]['settings']['seed'], 3)
    models = reports[3].keys() - {'settings', 'warnings', 'autoattack_runs'}
    self.assertLen(models, 6)
    # Seed 4 as a finished run leaves it (other numbers): reused, not run again. (A seed
    # without results runs, as seed 3 did.)
    reports[4] = json.loads(json.dumps(reports[3]))
    reports[4]['settings']['seed'] = 4
    for model in models:
      reports[4][model]['fgsm'] = 100.0 - reports[3][model]['fgsm'] / 2
    os.makedirs(os.path.join(output, 'seed_4'))
    with open(os.path.join(output, 'seed_4', 'results.json'), 'w') as f:
      json.dump(reports[4], f)
    written = os.path.getmtime(os.path.join(output, 'seed_3', 'results.json'))
    result = run_demo(output, '--seeds=3,4')
    self.assertEqual(result.returncode, 0, result.stderr[-3000:])
    self.assertEqual(result.stderr.count('Reusing'), 2, result.stderr[-3000:])
    self.assertEqual(os.path.getmtime(os.path.join(output, 'seed_3', 'results.json')), written)
    with open(os.path.join(output, 'results_over_seeds.json')) as f:
      summary = json.load(f)
    self.assertEqual(summary['seeds'], [3, 4])
    self.assertSameElements(summary['summary'], models)
    for model, row in summary['summary'].items():
      values = [reports[seed][model]['fgsm'] for seed in (3, 4)]
      self.assertEqual(row['fgsm']['min'], min(values))
      self.assertEqual(row['fgsm']['max'], max(values))
      self.assertAlmostEqual(row['fgsm']['mean'], sum(values) / 2, places=2)
    self.assertIn('mean (min-max)', result.stdout)

if __name__ == '__main__':
  tf.test.main()
