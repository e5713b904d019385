"""A TCP proxy that a fault test cuts to take a server away without stopping it.

The shared PostgreSQL of this machine serves every engineer's test runs, so nothing here ever stops
it: `TcpProxy` stands between the application and PostgreSQL so that "the database is down" is a
proxy that refuses connections and drops the open ones.
"""

from __future__ import annotations

import asyncio
import threading

from devtools.processes import free_port


class TcpProxy:
    """A TCP proxy on 127.0.0.1:<free port> to `target`, run by an event loop on its own thread.

    `cut()` closes the listening socket and every open connection (clients see "connection
    refused" and "server closed the connection", as when PostgreSQL stops); `restore()` listens
    again on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> None:
        self._thread.start()
        self.restore()

    def restore(self) -> None:
        self._run(self._listen())

    def cut(self) -> None:
        self._run(self._close_all())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(
            self._pipe(client_reader, server_writer),
            self._pipe(server_reader, client_writer),
            return_exceptions=True,
        )
        self._writers -= {client_writer, server_writer}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
