"""Collection order for `pytest -n 2 --dist loadscope` (pytest-xdist): the slowest test
classes first, so that the two workers finish together instead of one running the
longest class alone at the end. Measured on a 2-core machine; the order changes no
result, only when each class starts.

pytest also collects tf.test.TestCase.test_session (a context manager, not a test) and
skips it; it is left out so that skips in the summary mean something."""

# Seconds each took here (sequential run, 2 cores), slowest first; the rest keep their order.
SLOWEST_FIRST = (
    'test_flagfiles.py::FlagfileTest',  # 185
    'test_reliability.py::ReliabilityTest',  # 120
    'test_readme_commands.py::ReadmeCommandsTest',  # 97
    'test_demo.py::DemoSeedsTest',  # 82
    'test_evaluate.py::EvaluateBinaryTest',  # 75
    'test_export.py::ExportBinaryTest',  # 50
    'test_distribution.py::JobsOnTwoReplicasTest',  # 34
    'test_autoattack.py::DigitsModelTest',  # 40
)


def _rank(item):
  for rank, name in enumerate(SLOWEST_FIRST):
    if item.nodeid.startswith(f'tests/{name}::'):
      return rank
  return len(SLOWEST_FIRST)


def pytest_collection_modifyitems(items):
  items[:] = sorted((item for item in items if item.name != 'test_session'), key=_rank)
