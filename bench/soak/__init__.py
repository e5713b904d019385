"""The soak, `python -m bench.soak` (what it does and checks: __main__.py), in modules by job: `system`
(the processes it starts, the users and accounts it seeds), `load` (the users' trades, retries and
reads), `sockets` (clients following the browser's rules), `faults` (the fault schedule), `memory` (the
server processes' memory), `record` (what happened, and the progress log) and `checks` (the end checks).
"""
