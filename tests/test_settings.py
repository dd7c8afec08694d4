"""The settings objects of the Python API check their values as the binaries' flags do,
and name the setting; `by_flag` gives a settings object's values by flag name."""

import tensorflow as tf

from igam_tf import settings


class SettingsTest(tf.test.TestCase):

  def test_bad_values_are_refused_when_made(self):
    cases = [
        (lambda: settings.OptimizerSettings(learning_rate=-1.0),
         'OptimizerSettings.learning_rate must be positive'),
        (lambda: settings.OptimizerSettings(momentum=1.5), 'momentum must be at most 1.0'),
        (lambda: settings.BaselineSettings(epsilon=2.0), 'epsilon must be at most 1.0'),
        (lambda: settings.BaselineJob('standrd'), 'BaselineJob.method must be one of'),
        (lambda: settings.RunSettings('runs/x', 4, 2, mixed_precision='fp16'),
         'mixed_precision must be one of'),
        (lambda: settings.DataSettings('digits', classes=(3,)), 'classes names one class'),
        (lambda: settings.DataSettings('digits', image_size=0), 'image_size must be positive'),
        (lambda: settings.StudentSettings('madry_resnet', filters=(16, 16)),
         '--student_filters: madry_resnet takes 4 widths'),
        (lambda: settings.StudentSettings('simple_cnn', input_normalization='mean_l2'),
         '--student_input_normalization is for madry_resnet'),
        (lambda: settings.IGAMJob('t', run=settings.RunSettings(
            'runs/x', 4, 2, mixed_precision='mixed_float16')), 'IGAM takes input gradients'),
    ]
    for make, message in cases:
      with self.subTest(message):
        with self.assertRaisesRegex(ValueError, message):
          make()

  def test_by_flag_names_each_option_as_its_flag(self):
    job = settings.IGAMJob('teacher', student=settings.StudentSettings('simple_cnn'))
    values = settings.by_flag(job)
    self.assertEqual(values['teacher'], 'teacher')
    self.assertEqual(values['student_architecture'], 'simple_cnn')
    self.assertEqual(values['disc_learning_rate'], 0.1)
    self.assertEqual(values['learning_rate'], 3e-3)  # simple_cnn's own, filled in
    self.assertEqual(values['strategy'], 'default')
    self.assertNotIn('verbose', values)  # set by code, not a flag


if __name__ == '__main__':
  tf.test.main()
