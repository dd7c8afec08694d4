"""Tests the igam_tf.evaluate binary, igam_tf.masking_checks and igam_tf.model_sources.

Small convolutional nets are trained on scikit-learn's digits once for the module: a
standard one, and an adversarially trained one (PGD-5 at eps 0.1, finetuned from it).
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from absl.testing import parameterized
import keras
import numpy as np
import tensorflow as tf

from igam_tf import attacks
from igam_tf import baselines
from igam_tf import data
from igam_tf import evaluation
from igam_tf import masking_checks
from igam_tf import model_io
from igam_tf import serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 0.1
IMAGE_SHAPE = (28, 28, 1)
_FIXTURE = {}

# Attacks a SavedModel by its serving_default signature with only TensorFlow and the
# attacks module loaded; prints the accuracies as JSON.
TF_ONLY_SCRIPT = """
import json
import sys

import numpy as np
import tensorflow as tf

from igam_tf import attacks

export_dir, inputs_path, eps = sys.argv[1], sys.argv[2], float(sys.argv[3])
loaded = tf.saved_model.load(export_dir)  # kept: its variables die with it
serve = loaded.signatures['serving_default']
inputs = np.load(inputs_path)
dataset = tf.data.Dataset.from_tensor_slices((inputs['images'], inputs['labels']))
accuracies = attacks.robust_accuracy(lambda images: serve(images=images), dataset,
                                     ['clean', 'pgd10'], eps=eps, progress=False)
project = sorted(m for m in sys.modules if m.split('.')[0] in ('igam_tf', 'madry_models'))
print(json.dumps({'accuracies': accuracies, 'project_modules': project}))
"""


def tiny_classifier():
  return keras.Sequential([
      keras.Input(IMAGE_SHAPE),
      keras.layers.Conv2D(16, 5, strides=2, padding='same', activation='relu'),
      keras.layers.Conv2D(32, 3, strides=2, padding='same', activation='relu'),
      keras.layers.Flatten(), keras.layers.Dense(10)])


def train(model, stream, steps, learning_rate):
  model.compile(optimizer=keras.optimizers.Adam(learning_rate))
  model.fit(stream, epochs=1, steps_per_epoch=steps, verbose=0)


def setUpModule():
  keras.utils.set_random_seed(0)
  folder = tempfile.mkdtemp()
  stream = data.make_pipeline(data.load_dataset('digits', 'train'), 64, training=True,
                              seed=0).repeat()
  standard = tiny_classifier()
  train(baselines.StandardTraining(standard), stream, 100, 3e-3)
  robust = tiny_classifier()
  robust.set_weights(standard.get_weights())
  train(baselines.PGDAdversarialTraining(robust, epsilon=EPS, step_size=EPS / 4, steps=5),
        stream, 100, 1e-3)
  # models/: a SavedModel-only folder, a trained folder and a folder that holds no model.
  serving.export_classifier(robust, os.path.join(folder, 'models', 'pgd_at', 'saved_model'),
                            IMAGE_SHAPE)
  spec = model_io.classifier_spec('simple_cnn', 10, IMAGE_SHAPE, filters=(8, 8))
  model_io.save_model(os.path.join(folder, 'models', 'simple_cnn'),
                      model_io.build_model(spec), spec)
  os.makedirs(os.path.join(folder, 'models', 'logs'))
  serving.export_classifier(standard, os.path.join(folder, 'standard'), IMAGE_SHAPE)
  export_logits_only(rounded(standard), os.path.join(folder, 'rounded'))
  _FIXTURE.update(folder=folder, standard=standard, robust=robust,
                  test=data.load_dataset('digits', 'test'))


def tearDownModule():
  shutil.rmtree(_FIXTURE['folder'])


def run_python(args, cwd=REPO, pythonpath=None):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  if pythonpath:
    env['PYTHONPATH'] = pythonpath
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def check(result):
  if result.returncode:
    raise AssertionError(f'{result.args} failed ({result.returncode}):\n{result.stderr[-3000:]}')
  return result


def rounded(model):
  """`model` behind 8-bit rounding, which has no gradient in TensorFlow."""
  return keras.Sequential([keras.Input(IMAGE_SHAPE),
                           keras.layers.Lambda(lambda x: tf.round(x * 255) / 255), model])


def export_logits_only(model, export_dir):
  """A SavedModel with serving_default alone (serving.export_classifier needs gradients)."""
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint('serving_default', lambda images: {'logits': model(images)},
                       input_signature=[tf.TensorSpec((None,) + IMAGE_SHAPE, tf.float32)])
  archive.write_out(export_dir, verbose=False)


@tf.custom_gradient
def quantize(images):
  """8-bit rounding with its true derivative, zero almost everywhere: masked gradients."""
  return tf.round(images * 255) / 255, tf.zeros_like


class EvaluateBinaryTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.output = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.output)

  def test_a_saved_model_gives_the_numbers_of_its_keras_model(self):
    export_dir = os.path.join(_FIXTURE['folder'], 'models', 'pgd_at', 'saved_model')
    names = ['clean', 'fgsm', 'pgd10', 'apgd20_ce', 'apgd20_dlr']
    check(run_python(['-m', 'igam_tf.evaluate', f'--saved_model={export_dir}',
                      '--dataset=digits', '--epsilon=1/10', f'--attacks={",".join(names)}',
                      '--num_examples=100', '--batch_size=50', '--masking_checks=false',
                      f'--output={self.output}/single.json']))
    with open(os.path.join(self.output, 'single.json')) as f:
      report = json.load(f)
    keras_numbers = evaluation.evaluate_models(
        {'keras': _FIXTURE['robust']}, _FIXTURE['test'], names, EPS, num_examples=100,
        batch_size=50, progress=False).accuracies['keras']
    self.assertEqual(report['model'], 'saved_model')
    self.assertEqual({k: report[k] for k in keras_numbers}, keras_numbers)
    self.assertGreater(report['clean'], 80.0)
    self.assertLess(report['pgd10'], report['clean'])
    self.assertEqual(report['warnings'], [])
    settings = report['settings']
    self.assertEqual(settings['epsilon'], 0.1)
    self.assertEqual(settings['step_size'], 0.025)
    self.assertEqual(settings['examples'], 100)
    self.assertEqual(settings['attacks'], names)
    self.assertEqual(settings['models'], {'saved_model': export_dir})
    self.assertTrue(os.path.exists(os.path.join(self.output, 'single.md')))

  def test_a_folder_of_models_gives_one_table_with_masking_checks(self):
    result = check(run_python([
        '-m', 'igam_tf.evaluate', f'--model_dir={_FIXTURE["folder"]}/models',
        '--dataset=digits', '--epsilon=0.1', '--attacks=clean,fgsm,pgd20',
        '--num_examples=60', '--masking_examples=40', '--batch_size=60',
        f'--transfer_from={_FIXTURE["folder"]}/standard', f'--output={self.output}/report']))
    with open(os.path.join(self.output, 'report.json')) as f:
      report = json.load(f)
    self.assertSameElements(report['settings']['models'], ['pgd_at', 'simple_cnn'])
    for name in ('pgd_at', 'simple_cnn'):
      self.assertSameElements(report[name], ['clean', 'fgsm', 'pgd20', 'worst_case'])
      self.assertLessEqual(report[name]['worst_case'], report[name]['pgd20'])
      checks = [finding['check'] for finding in report['masking_checks'][name]['findings']]
      self.assertSameElements(checks, masking_checks.CHECKS)
    self.assertEqual(report['settings']['masking_examples'], 40)
    self.assertIsInstance(report['warnings'], list)
    with open(os.path.join(self.output, 'report.md')) as f:
      markdown = f.read()
    self.assertIn('| Model | Clean | FGSM | PGD-20 | Worst case |', markdown)
    rows = [line for line in markdown.splitlines() if line.startswith('| ')]
    self.assertLen(rows, 3)  # one header, one row per model: one table
    self.assertIn('| Model | Clean | FGSM | PGD-20 | Worst case |', result.stdout)
    self.assertIn('ok: pgd_at: transfer:', result.stdout)

  def test_autoattack_by_default_on_a_saved_model(self):
    export_dir = os.path.join(_FIXTURE['folder'], 'models', 'pgd_at', 'saved_model')
    result = check(run_python(['-m', 'igam_tf.evaluate', f'--saved_model={export_dir}',
                               '--dataset=digits', '--epsilon=0.1', '--num_examples=40',
                               '--batch_size=40', '--masking_checks=false',
                               f'--output={self.output}/aa.json']))
    with open(os.path.join(self.output, 'aa.json')) as f:
      report = json.load(f)
    self.assertEqual(report['settings']['attacks'], list(evaluation.DEFAULT_ATTACKS))
    self.assertIn('autoattack', report)
    run = report['autoattack_runs']['saved_model']['autoattack']
    after = run['accuracy_after']
    self.assertEqual(list(after), ['clean', 'apgd_ce', 'apgd_t', 'fab_t', 'square'])
    self.assertEqual(list(after.values()), sorted(after.values(), reverse=True))
    self.assertEqual(report['autoattack'], after['square'])
    self.assertEqual(after['clean'], report['clean'])
    self.assertGreater(report['autoattack'], 0.0)  # a robust model, attacked to the end
    self.assertLessEqual(report['worst_case'], min(report['autoattack'], report['pgd20']))
    self.assertEqual(run['warnings'], [])
    self.assertEqual(report['warnings'], [])
    self.assertIn('AutoAttack (standard): Square on the', result.stdout)
    self.assertIn('| Model | Clean | FGSM | PGD-20 | AutoAttack | Worst case |', result.stdout)
    with open(os.path.join(self.output, 'aa.md')) as f:
      markdown = f.read()
    self.assertIn('| Model | Clean | + APGD-CE | + APGD-T | + FAB-T | + Square | Seconds |',
                  markdown)

  def test_autoattack_sanity_checks_flag_a_masked_saved_model(self):
    masked = keras.Sequential([keras.Input(IMAGE_SHAPE), keras.layers.Lambda(quantize),
                               _FIXTURE['standard']])
    export_dir = os.path.join(self.output, 'masked')
    serving.export_classifier(masked, export_dir, IMAGE_SHAPE)
    result = check(run_python(['-m', 'igam_tf.evaluate', f'--saved_model={export_dir}',
                               '--dataset=digits', '--epsilon=0.1', '--num_examples=20',
                               '--batch_size=20', '--attacks=pgd20,autoattack',
                               '--masking_checks=false', f'--output={self.output}/masked.json']))
    with open(os.path.join(self.output, 'masked.json')) as f:
      report = json.load(f)
    self.assertGreater(report['pgd20'], 50.0)  # the gradient attacks see nothing...
    self.assertLess(report['autoattack'], 20.0)  # ...Square does
    warnings = ' '.join(report['warnings'])
    self.assertRegex(warnings, r'masked: AutoAttack: (\d+) of \1 points have an all-zero')
    self.assertIn('masked: AutoAttack: Square (gradient-free) broke', warnings)
    self.assertIn('WARNING: ', result.stdout)

  def test_a_model_without_gradients_gets_an_error_not_numbers(self):
    result = run_python(['-m', 'igam_tf.evaluate', f'--model_dir={_FIXTURE["folder"]}/rounded',
                         '--dataset=digits', f'--output={self.output}/report'])
    self.assertEqual(result.returncode, 1)
    self.assertIn('ERROR: rounded: The model gives no gradient', result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    self.assertEmpty(os.listdir(self.output))

  def test_models_done_are_written_before_a_later_one_fails(self):
    folder = os.path.join(self.output, 'two')
    shutil.copytree(os.path.join(_FIXTURE['folder'], 'models', 'pgd_at', 'saved_model'),
                    os.path.join(folder, 'a_good', 'saved_model'))
    shutil.copytree(os.path.join(_FIXTURE['folder'], 'rounded'),
                    os.path.join(folder, 'b_rounded', 'saved_model'))
    result = run_python(['-m', 'igam_tf.evaluate', f'--model_dir={folder}', '--dataset=digits',
                         '--epsilon=0.1', '--attacks=clean,fgsm', '--num_examples=20',
                         '--batch_size=20', '--masking_checks=false',
                         f'--output={self.output}/partial.json'])
    self.assertEqual(result.returncode, 1)
    self.assertIn('ERROR: b_rounded: The model gives no gradient', result.stderr)
    self.assertNotIn('Traceback', result.stderr)
    with open(os.path.join(self.output, 'partial.json')) as f:
      report = json.load(f)
    self.assertEqual(report['model'], 'a_good')
    self.assertSameElements(report['settings']['models'], ['a_good', 'b_rounded'])
    with open(os.path.join(self.output, 'partial.md')) as f:
      self.assertIn('Partial: 1 of 2 models evaluated so far.', f.read())


class ReportTest(tf.test.TestCase):

  def test_the_fast_ensemble_is_never_reported_as_autoattack(self):
    # APGD-CE and APGD-T alone are not AutoAttack: the report must not call them that.
    evaluated = evaluation.evaluate_models(
        {'pgd_at': _FIXTURE['robust']}, _FIXTURE['test'], ['clean', 'autoattack_fast'],
        EPS, num_examples=10, batch_size=10, progress=False)
    run = evaluated.autoattack_runs['pgd_at']['autoattack_fast']
    # A failed sanity check, to see how warnings name the ensemble.
    evaluated = evaluation.Evaluation(evaluated.accuracies, {'pgd_at': {
        'autoattack_fast': dataclasses.replace(run, warnings=['a check failed'])}})
    output = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, output)
    markdown = evaluation.write_report(output, evaluated, {'epsilon': EPS},
                                       warnings=evaluated.warnings)
    name = 'AutoAttack (fast: APGD-CE, APGD-T)'
    self.assertEqual(re.findall(r'AutoAttack(?! \(fast: APGD-CE, APGD-T\))', markdown), [])
    self.assertIn(f'| Model | Clean | {name} | Worst case |', markdown)
    self.assertIn(f'## {name}, attack by attack', markdown)
    self.assertIn(f'| pgd_at, {name} | ', markdown)
    self.assertIn(f'WARNING: pgd_at: {name}: a check failed', markdown)
    with open(os.path.join(output, 'results.json')) as f:
      report = json.load(f)
    self.assertEqual(set(report['pgd_at']), {'clean', 'autoattack_fast', 'worst_case'})
    self.assertEqual(report['autoattack_runs']['pgd_at']['autoattack_fast']['name'], name)
    self.assertEqual(list(report['autoattack_runs']['pgd_at']['autoattack_fast'][
        'accuracy_after']), ['clean', 'apgd_ce', 'apgd_t'])
    self.assertEqual(report['warnings'], [f'pgd_at: {name}: a check failed'])
    self.assertEqual(evaluation.autoattack_title(evaluated.autoattack_runs), name)


class ServingTest(tf.test.TestCase):

  def test_attacking_a_saved_model_needs_only_tensorflow_and_the_attacks(self):
    folder = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, folder)
    images, labels = next(iter(_FIXTURE['test'].dataset.take(50).batch(50)))
    np.savez(os.path.join(folder, 'inputs.npz'), images=images, labels=labels)
    script = os.path.join(folder, 'attack.py')
    with open(script, 'w') as f:
      f.write(TF_ONLY_SCRIPT)
    result = check(run_python([script, os.path.join(_FIXTURE['folder'], 'standard'),
                               'inputs.npz', str(EPS)], cwd=folder, pythonpath=REPO))
    served = json.loads(result.stdout.strip().splitlines()[-1])
    package = sorted(f'igam_tf.attacks.{name[:-len(".py")]}'
                     for name in os.listdir(os.path.join(REPO, 'igam_tf', 'attacks'))
                     if name.endswith('.py') and name != '__init__.py')
    self.assertEqual(served['project_modules'], ['igam_tf', 'igam_tf.attacks'] + package)
    expected = attacks.robust_accuracy(
        _FIXTURE['standard'], tf.data.Dataset.from_tensor_slices((images, labels)),
        ['clean', 'pgd10'], eps=EPS, progress=False)
    self.assertEqual(served['accuracies'], expected)


class MaskingChecksTest(tf.test.TestCase, parameterized.TestCase):

  def run_checks(self, model):
    return masking_checks.run_checks(
        model, _FIXTURE['test'], EPS, num_examples=100, transfer_source=_FIXTURE['standard'],
        transfer_name='standard', progress=False)

  def test_checks_fire_on_a_model_with_masked_gradients(self):
    masked = keras.Sequential([keras.Input(IMAGE_SHAPE), keras.layers.Lambda(quantize),
                               _FIXTURE['standard']])
    report = self.run_checks(masked)
    suspicious = {finding.check for finding in report.findings if finding.suspicious}
    self.assertContainsSubset({'zero_gradients', 'transfer', 'large_epsilon'}, suspicious)
    self.assertLen(report.warnings, len(suspicious))
    self.assertEqual(report.measurements['zero_gradient_examples'], 100)
    self.assertIn('100 of 100 examples (100.0%) have an all-zero input gradient',
                  ' '.join(report.warnings))

  def test_checks_stay_quiet_on_an_adversarially_trained_model(self):
    report = self.run_checks(_FIXTURE['robust'])
    self.assertEqual(report.warnings, [])
    self.assertSameElements([finding.check for finding in report.findings],
                            masking_checks.CHECKS)
    self.assertGreater(report.measurements['pgd20'], 20.0)  # robust, and attacked

  def test_a_model_without_any_gradient_is_an_error_not_a_result(self):
    with self.assertRaisesRegex(attacks.AttackError, 'no gradient'):
      masking_checks.run_checks(rounded(_FIXTURE['standard']), _FIXTURE['test'], EPS,
                                num_examples=10, progress=False)

  @parameterized.named_parameters(
      ('steps_rise', lambda: masking_checks.check_steps({5: 40.0, 20: 41.0, 50: 42.5}), True),
      ('steps_within_tolerance',
       lambda: masking_checks.check_steps({5: 40.0, 20: 41.0, 50: 41.9}), False),
      ('single_step_wins', lambda: masking_checks.check_single_step(30.0, 32.5), True),
      ('epsilon_rises',
       lambda: masking_checks.check_epsilon({0.0: 90.0, 0.1: 40.0, 0.2: 45.0}), True),
      ('epsilon_falls',
       lambda: masking_checks.check_epsilon({0.0: 90.0, 0.1: 40.0, 0.2: 10.0}), False),
      ('large_epsilon_stays_high', lambda: masking_checks.check_large_epsilon(0.5, 5.5), True),
      ('large_epsilon_reaches_zero', lambda: masking_checks.check_large_epsilon(0.5, 5.0),
       False),
      ('apgd_weaker', lambda: masking_checks.check_apgd(45.0, 42.5), True),
      ('apgd_close', lambda: masking_checks.check_apgd(44.0, 42.5), False),
      ('transfer_wins', lambda: masking_checks.check_transfer(30.0, 32.5, 'source'), True),
      ('transfer_loses', lambda: masking_checks.check_transfer(50.0, 32.5, 'source'), False),
      ('many_zero_gradients', lambda: masking_checks.check_zero_gradients(2, 100), True),
      ('few_zero_gradients', lambda: masking_checks.check_zero_gradients(1, 100), False),
      ('probabilities', lambda: masking_checks.check_outputs(
          tf.nn.softmax(np.random.RandomState(0).randn(12, 10)).numpy()), True),
      ('logits', lambda: masking_checks.check_outputs(
          np.random.RandomState(0).randn(12, 10)), False),
  )
  def test_thresholds(self, make_finding, suspicious):
    finding = make_finding()
    self.assertEqual(finding.suspicious, suspicious, finding.message)
    if finding.check != 'outputs' or not suspicious:
      self.assertRegex(finding.message, r'\d')  # names its numbers


if __name__ == '__main__':
  tf.test.main()
