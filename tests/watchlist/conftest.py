import pytest


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    """Run a service call and the on-commit callbacks it registered (these tests run in a transaction)."""

    def run_committed(call, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return call(*args, **kwargs)

    return run_committed
