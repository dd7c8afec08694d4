"""pytest collects tf.test.TestCase.test_session (a context manager, not a test) and
skips it; leave it out so skips in the summary mean something."""


def pytest_collection_modifyitems(items):
  items[:] = [item for item in items if item.name != 'test_session']
