import pytest

from tests.fixtures.simulator import DEMO_CANO


@pytest.fixture
def live(sim_account, simulator, celery_worker_process, daphne_server):
    """The whole stack (Daphne, Celery worker, KIS simulator) with the user's simulator account holding nothing."""
    simulator.set_holdings(DEMO_CANO, [])
    return daphne_server
