"""A TCP relay to the gateway that a test can cut, to break streams for real."""

from __future__ import annotations

import asyncio
import contextlib


class TcpRelay:
    """Listens on 127.0.0.1 and relays bytes to ``target``; ``cut`` closes every
    connection open now (new ones are still accepted). ``delay``: the server's first
    bytes on each connection are held that many seconds (a slow handshake)."""

    def __init__(self, target: str, *, delay: float = 0.0) -> None:
        self.delay = delay
        host, _, port = target.rpartition(":")
        self._upstream = (host, int(port))
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def __aenter__(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def target(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    def cut(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._open |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer, self.delay)),
        ]
        self._pumps.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._pumps.difference_update(pumps)
        for w in (writer, up_writer):
            self._open.discard(w)
            w.transport.abort()

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: float = 0.0
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                    delay = 0.0
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
