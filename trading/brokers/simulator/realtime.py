"""The KIS real-time WebSocket feed of the simulator (owned by the real-time part; a stub until it lands)."""


def setup_realtime(app, state):
    pass
