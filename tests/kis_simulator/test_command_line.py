"""`python -m kis_simulator` as `scripts/run` starts it: KIS's limits on unless the command line lifts them."""

import httpx

from tests.fixtures.simulator import start_simulator


def test_the_limits_are_on_by_default_and_the_command_line_sets_them(tmp_path):
    default = start_simulator(tmp_path / "default.log")
    lifted = start_simulator(tmp_path / "lifted.log", "--rate-limit", "off", "--token-issue-interval", "0")
    custom = start_simulator(tmp_path / "custom.log", "--rate-limit-paper", "1", "--rate-limit-real", "15")
    try:
        assert default.limits()["limits"] == {"paper": 2.0, "real": 20.0}
        assert default.limits()["token_issue_interval"] == 60.0
        assert (lifted.limits()["limits"], lifted.limits()["token_issue_interval"]) == (None, 0.0)
        assert custom.limits()["limits"] == {"paper": 1.0, "real": 15.0}
        body = {"grant_type": "client_credentials", "appkey": "cli-key", "appsecret": "secret"}
        assert [httpx.post(lifted.url + "/oauth2/tokenP", json=body).status_code for _ in range(2)] == [
            200,
            200,
        ]
        assert [httpx.post(default.url + "/oauth2/tokenP", json=body).status_code for _ in range(2)] == [
            200,
            403,
        ]
    finally:
        for handle in (default, lifted, custom):
            handle.close()
