"""Collection order for `pytest -n 2 --dist loadscope` (pytest-xdist): the slowest test
classes first, so that the two workers finish together instead of one running the
longest class alone at the end. Measured on a 2-core machine; the order changes no
result, only when each class starts.

pytest also collects tf.test.TestCase.test_session (a context manager, not a test) and
skips it; it is left out so that skips in the summary mean something."""

# Seconds each took here (two workers, 2 cores), slowest first; the rest keep their order.
SLOWEST_FIRST = (
    'test_multi_worker.py::TwoWorkersTest',  # 150 alone
    'test_readme_commands.py::ReadmeCommandsTest',  # 114
    'test_reliability.py::ReliabilityTest',  # 110
    'test_evaluate.py::EvaluateBinaryTest',  # 100
    'test_flagfiles.py::FlagfileTest',  # 75
    'test_autoattack.py::DigitsModelTest',  # 70
    'test_export.py::ExportBinaryTest',  # 60
    'test_interruptions.py::KilledAndStartedAgainTest',  # 60 alone
    'test_demo.py::DemoSeedsTest',  # 48
    'test_distribution.py::JobsOnTwoReplicasTest',  # 34
)


def _rank(item):
  for rank, name in enumerate(SLOWEST_FIRST):
    if item.nodeid.startswith(f'tests/{name}::'):
      return rank
  return len(SLOWEST_FIRST)


def pytest_collection_modifyitems(items):
  items[:] = sorted((item for item in items if item.name != 'test_session'), key=_rank)
