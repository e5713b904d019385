"""The limits that keep one socket, or one user, from hurting everyone else (contract.md, "WebSocket").

- A frame over MAX_FRAME_BYTES is refused. The ASGI server refuses it first where it can (scripts/run
  starts Daphne with `--websocket-max-frame-size`, uvicorn with `--ws-max-size`: the connection is
  dropped); the consumer checks the whole message again (Daphne's message limit stays at its 1 MB
  default: autobahn applies it to what the server sends too, and a `?render=html` snapshot can pass
  64 KB).
- Inbound frames are metered per socket (`FrameRate`): a page sends a ping every 20 s and a resync
  now and then; a socket that keeps sending more than RATE frames a second gets an `error` and 4429.
- What the server holds for a socket and has not yet written to it is bounded (`unsent_bytes`):
  Daphne's `send` returns at once and Twisted's transport keeps whatever the kernel would not take,
  without limit (a `?render=html` socket that asked for snapshots and never read grew Daphne by 411 MB
  in 20 s). A socket holding more than MAX_UNSENT_BYTES when something more is to be sent is closed
  4408; its client resyncs when it reconnects.
- A user holds at most MAX_SOCKETS_PER_USER sockets per process (beyond: 4429). Per process rather
  than across processes: what one user's sockets cost (memory, loop time) is a process's, the count
  needs no Redis round trip per handshake and no expiry for a process that died, and a user still gets
  at least the contract's 256 on any one process.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

CLOSE_TOO_MANY = 4429
CLOSE_FALLING_BEHIND = 4408

MAX_FRAME_BYTES = 64 * 1024
RATE = 20.0  # frames a second, sustained
BURST = 60  # frames at once, on top of which RATE refills
MAX_UNSENT_BYTES = 256 * 1024
MAX_SOCKETS_PER_USER = 300
READ_SIZE = 4096


def frame_too_large(text: str | None, data: bytes | None) -> bool:
    if data is not None:
        return len(data) > MAX_FRAME_BYTES
    # Characters are at most 4 bytes: only a long text is encoded to be measured.
    return text is not None and len(text) > MAX_FRAME_BYTES // 4 and len(text.encode()) > MAX_FRAME_BYTES


class FrameRate:
    """A token bucket: BURST frames at once, refilled at RATE a second."""

    __slots__ = ("stamp", "tokens")

    def __init__(self) -> None:
        self.tokens = float(BURST)
        self.stamp = time.monotonic()

    def admit(self) -> bool:
        now = time.monotonic()
        self.tokens = min(float(BURST), self.tokens + (now - self.stamp) * RATE)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def daphne_transport(send):
    """The Twisted transport of a socket served by Daphne, which hands a consumer
    `partial(Server.handle_reply, protocol)` as its `send`; None under another server."""
    if not isinstance(send, partial) or not send.args:
        return None
    return getattr(send.args[0], "transport", None)


def unsent_bytes(send) -> int | None:
    """Bytes written for this socket that the server still holds, or None where that cannot be read.

    Under Daphne, the transport's write buffer: `dataBuffer` (from `offset` on) plus the pieces appended
    since it was last flushed. Twisted has no public reading of it (its producer API would say only
    "over 64 KB", and Daphne's HTTP channel already holds the transport's producer slot). uvicorn's
    `send` waits instead until the client has read enough (websockets' drain), so nothing piles up
    there, but a reader that stops holds up the sender (docs/PERFORMANCE.md)."""
    transport = daphne_transport(send)
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return None


def stop_reading(send) -> None:
    """Read nothing from the socket's connection until `resume_reading`. Daphne reads and parses every
    frame a client sends, and queues it for the consumer without limit, until the connection is gone
    (for a closed socket, one second after its close frame): a flood would go on costing the process
    all that time, and one sent while the socket connects (3 s of frames were queued before the
    consumer's first read, in a flood). What is written still goes out."""
    transport = daphne_transport(send)
    if transport is not None:
        transport.stopReading()


def read_in_small_pieces(send) -> None:
    """Under Daphne, read the connection READ_SIZE bytes at a time rather than Twisted's 64 KB: a read
    is parsed frame by frame in one go, and 64 KB of a flood's tiny frames held the event loop for tens
    of milliseconds, which every other socket of the process waited out (bench/abuse.py)."""
    transport = daphne_transport(send)
    if transport is not None:
        transport.bufferSize = READ_SIZE


def resume_reading(send) -> None:
    transport = daphne_transport(send)
    if transport is not None:
        transport.startReading()


def inbound_backlog(receive) -> int:
    """Frames the server queued for the consumer and it has not read yet (Daphne and Channels' test
    communicator hand it `asyncio.Queue.get`)."""
    queue = getattr(receive, "__self__", None)
    return queue.qsize() if isinstance(queue, asyncio.Queue) else 0
