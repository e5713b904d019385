import pytest

from tests.fixtures.simulator import DEMO_CANO

# KIS's own call budgets, as a user's account has them (config/settings.py and the simulator's defaults).
DEFAULT_LIMITS = {
    "KIS_RATE_LIMIT_PAPER": "2",
    "KIS_RATE_LIMIT_REAL": "18",
}


@pytest.fixture(autouse=True)
def default_call_budget(simulator, monkeypatch, settings):
    """End to end, the limits a user gets: the client's budget in this process and in every server the
    test starts, and the simulator's (EGW00201 beyond it). The rest of the suite lifts them."""
    for name, value in DEFAULT_LIMITS.items():
        monkeypatch.setenv(name, value)
        setattr(settings, name, float(value))
    simulator.set_limits(rate_limits={"paper": 2, "real": 20})
    yield
    assert sum(simulator.limits()["egw00201"].values()) == 0, "a call went beyond KIS's budget"


@pytest.fixture
def live(sim_account, simulator, celery_worker_process, daphne_server):
    """The whole stack (Daphne, Celery worker, KIS simulator) with the user's simulator account holding nothing."""
    simulator.set_holdings(DEMO_CANO, [])
    return daphne_server
