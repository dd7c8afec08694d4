"""A training step of its own before a method's extra terms start (IGAM's igam_start_step,
the gradient-norm penalty's penalty_start_step): plain cross-entropy there, with none
of the terms' graph (teacher, discriminator, double backpropagation), which the
authors' schedule would otherwise run for 280k of its 320k steps only to zero it."""


class WarmUpStep:
  """A keras.Model mixin. The model names the step its terms start at (`terms_start_step`,
  e.g. a property) and reads `terms_on` in its `train_step` (a Python bool, fixed when
  the step is traced): Keras's training function becomes two, each traced on its first
  call, taken by the step number (read from the optimizer once per fit or
  train_on_batch, then counted on the host)."""

  terms_start_step = 0
  terms_on = True
  steps_done = 0

  def make_train_function(self, force=False):
    self.steps_done = int(self.optimizer.iterations.numpy())
    if self.train_function is not None and not force:
      return self.train_function
    steps = {}
    for terms_on in (False, True):
      super().make_train_function(force=True)
      steps[terms_on] = self.train_function

    def train_function(iterator):
      self.terms_on = self.steps_done >= self.terms_start_step  # read when traced
      logs = steps[self.terms_on](iterator)
      self.steps_done += self.steps_per_execution
      return logs

    self.train_function = train_function
    return train_function
