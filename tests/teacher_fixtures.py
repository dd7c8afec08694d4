"""A small finetuned teacher for tests that run train_igam: a simple_cnn trained for two
steps on digits 0-2, its head finetuned for two more, on one device."""

from igam_tf import experiments
from igam_tf import settings

DIGITS = settings.DataSettings('digits', classes=(0, 1, 2), batch_size=16, validation_split='')


def make_teacher(root):
  """Trains the source in root/source and the teacher in root/teacher; returns the
  teacher's folder."""
  experiments.train_baseline(settings.BaselineJob(
      'standard', student=settings.StudentSettings('simple_cnn', filters=(4, 8)),
      optimizer=settings.OptimizerSettings('momentum', 0.05), data=DIGITS,
      run=settings.RunSettings(f'{root}/source', 2, 2, verbose=0)))
  experiments.finetune_teacher(settings.FinetuneJob(
      f'{root}/source', data=DIGITS, run=settings.RunSettings(f'{root}/teacher', 2, 2, verbose=0)))
  return f'{root}/teacher'
