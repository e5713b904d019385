"""Development tooling shared by the tests, the benchmarks and the soak: launchers of the processes they
start (a private redis-server, a TCP proxy, the ASGI servers, Celery workers and beat, the KIS simulator)
as plain classes and functions. Nothing here depends on pytest; tests/fixtures/ wraps it in fixtures."""
