"""Two worker processes on 127.0.0.1 (--strategy=multi_worker_mirrored, TF_CONFIG) run
the binaries as one process does: the same weights for the same global batch, the same
evaluation report, written once by the chief; the model they train exports.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from igam_tf import experiments
from igam_tf import model_io
from igam_tf import settings
from tests import teacher_fixtures
from tests import worker_processes

REPO = worker_processes.REPO
MULTI_WORKER = '--strategy=multi_worker_mirrored'
# PGD-AT: every example draws its own random start, so the workers' shares of a batch
# must be the examples one process gives those draws to.
PGD_AT = ['--method=pgd_at', '--epsilon=0.1', '--pgd_steps=2', '--pgd_step_size=0.05',
          '--dataset=digits', '--classes=0,1,2', '--student_architecture=simple_cnn',
          '--student_filters=4,8', '--optimizer=momentum', '--learning_rate=0.05',
          '--train_steps=4', '--checkpoint_every=2', '--batch_size=16']


def _alone(binary, args, root, timeout=300):
  process = worker_processes.start(binary, args, root)
  code = process.wait(timeout=timeout)
  with open(process.log_path) as log:
    return code, log.read()


def _newest_step(model_dir):
  return max(int(path.split('ckpt-')[1].split('.')[0])
             for path in glob.glob(f'{model_dir}/checkpoints/ckpt-*.index'))


def _weights(model_dir):
  model, _ = model_io.load_model(model_dir)
  return {w.path: w.numpy() for w in model.weights}


class TwoWorkersTest(tf.test.TestCase):

  def assert_same_weights(self, one, other):
    self.assertEqual(sorted(one), sorted(other))
    difference = max(float(np.abs(one[k] - other[k]).max()) for k in one)
    self.assertGreater(max(float(np.abs(v).max()) for v in one.values()), 0.1)
    self.assertLess(difference, 2e-5, f'the weights differ by {difference}')

  def test_two_workers_train_one_process_weights_and_the_chief_alone_writes(self):
    root = tempfile.mkdtemp()
    with worker_processes.Job('train_baseline', PGD_AT + [f'--model_dir={root}/two',
                                                          MULTI_WORKER], root) as job:
      self.assertEqual(job.wait(), [0, 0], job.logs())
    code, log = _alone('train_baseline', PGD_AT + [f'--model_dir={root}/one'], root)
    self.assertEqual(code, 0, log)
    self.assert_same_weights(_weights(f'{root}/one'), _weights(f'{root}/two'))

    # One writer: one TensorBoard log, the checkpoints of one run; the other worker's
    # temporary folder is gone.
    self.assertLen(glob.glob(f'{root}/two/logs/events.out.tfevents.*'), 1)
    self.assertCountEqual(
        [os.path.basename(p) for p in glob.glob(f'{root}/two/checkpoints/ckpt-*.index')],
        ['ckpt-2.index', 'ckpt-4.index'])
    self.assertEqual(os.listdir(job.tmp_dirs[1]), [])
    with open(f'{root}/two/run_config.json') as f:
      self.assertEqual(json.load(f)['baseline']['pgd_steps'], 2)

    # What the two workers trained exports, and the export serves.
    export = subprocess.run(
        [sys.executable, '-m', 'igam_tf.export', '--model=trained', f'--model_dir={root}/two',
         f'--export_dir={root}/export'], cwd=REPO, capture_output=True, text=True,
        timeout=300, check=False)
    self.assertEqual(export.returncode, 0, export.stderr[-3000:])
    served = tf.saved_model.load(f'{root}/export')
    outputs = served.signatures['serving_default'](images=tf.zeros([2, 28, 28, 1]))
    self.assertEqual(outputs['logits'].shape, (2, 3))

  def test_workers_that_would_train_different_models_are_refused(self):
    root = tempfile.mkdtemp()
    # Started with different flags: each would train another model.
    with worker_processes.Job('train_baseline', PGD_AT + [f'--model_dir={root}/flags',
                                                          MULTI_WORKER], root,
                              per_worker=[[], ['--learning_rate=0.1', '--seed=1']]) as job:
      self.assertEqual(job.wait(), [1, 1], job.logs())
    for worker in (0, 1):
      self.assertIn('The workers were started with different --learning_rate, --seed',
                    job.log(worker))
    self.assertFalse(os.path.exists(f'{root}/flags'))
    # Worker 1 does not see the chief's folder (a machine-local disk): it would start
    # afresh while the chief resumes.
    code, log = _alone('train_baseline', PGD_AT + [f'--model_dir={root}/chief',
                                                   '--train_steps=2'], root)
    self.assertEqual(code, 0, log)
    with worker_processes.Job('train_baseline', PGD_AT + [MULTI_WORKER,
                                                          '--resume_with_changes=train_steps'],
                              root, per_worker=[[f'--model_dir={root}/chief'],
                                                [f'--model_dir={root}/elsewhere']]) as job:
      self.assertEqual(job.wait(), [1, 1], job.logs())
    self.assertIn('The workers resumed', job.log(0))
    self.assertIn('at different steps (0, 2): --model_dir must be a folder every worker '
                  'sees', job.log(0))
    self.assertEqual(_newest_step(f'{root}/chief'), 2)

  def test_igam_with_disc_every_5_on_two_workers(self):
    # The paper's flagfiles set --disc_every=5: 6 steps take the discriminator step at 5.
    root = tempfile.mkdtemp()
    teacher = teacher_fixtures.make_teacher(root)
    igam = [f'--teacher={teacher}', '--dataset=digits', '--classes=0,1,2',
            '--student_architecture=simple_cnn', '--student_filters=4,8', '--optimizer=momentum',
            '--learning_rate=0.05', '--disc_blocks=2', '--disc_filters=4', '--disc_every=5',
            '--diff_weight=1000', '--train_steps=6', '--checkpoint_every=3', '--batch_size=16',
            '--validation_split=']
    with worker_processes.Job('train_igam', igam + [f'--model_dir={root}/two', MULTI_WORKER],
                              root) as job:
      self.assertEqual(job.wait(), [0, 0], job.logs())
    self.assertIn('IGAM student saved', job.log(0))
    code, log = _alone('train_igam', igam + [f'--model_dir={root}/one'], root)
    self.assertEqual(code, 0, log)
    self.assert_same_weights(_weights(f'{root}/one'), _weights(f'{root}/two'))

  def test_evaluate_on_two_workers_reports_what_one_process_does(self):
    # Each worker attacks its share of every batch; the counts are gathered from both.
    root = tempfile.mkdtemp()
    experiments.train_baseline(settings.BaselineJob(
        'standard', student=settings.StudentSettings('simple_cnn'),
        optimizer=settings.OptimizerSettings('adam', 3e-3),
        data=settings.DataSettings('digits', classes=(0, 1, 2, 3), batch_size=32,
                                   validation_split=''),
        run=settings.RunSettings(f'{root}/model', 60, 60, verbose=0)))
    # A small eps, so that every attack leaves some points and breaks others.
    evaluate = [f'--model_dir={root}/model', '--dataset=digits', '--classes=0,1,2,3',
                '--epsilon=0.03',
                '--attacks=clean,fgsm,pgd10,autoattack_fast', '--num_examples=90',
                '--batch_size=40', '--masking_examples=40']
    with worker_processes.Job('evaluate', evaluate + [f'--output={root}/two.json',
                                                      MULTI_WORKER], root) as job:
      self.assertEqual(job.wait(), [0, 0], job.logs())
    code, log = _alone('evaluate', evaluate + [f'--output={root}/one.json'], root)
    self.assertEqual(code, 0, log)
    with open(f'{root}/one.json') as one, open(f'{root}/two.json') as two:
      alone, together = json.load(one), json.load(two)
    self.assertGreater(alone['clean'], alone['pgd10'])
    self.assertGreater(alone['autoattack_fast'], 0)
    for report in (alone, together):  # what differs: how it ran, and how long
      del report['settings']['strategy']
      del report['autoattack_runs']['model']['autoattack_fast']['seconds']
    self.assertEqual(alone, together)
    self.assertEqual(os.listdir(job.tmp_dirs[1]), [])


if __name__ == '__main__':
  tf.test.main()
