"""A fault-injecting TCP proxy: added latency, throttling, resets and clogs, per link.

One asyncio loop on a background thread serves every link. A link listens on
127.0.0.1 (port 0) and forwards each connection to one upstream address, so
that each agent's control stream can be faulted on its own. Controls are
called from any thread and have taken effect when they return.

Each direction of a connection is a delay line: a reader stamps every chunk
with the time it may leave, a writer sends it then (added latency does not
cut throughput), paced by the link's rate and held while the link is clogged.
Held data waits in a bounded queue, then in the kernel's buffers: nothing is
dropped, and the connections stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["DOWN", "UP", "FaultProxy", "Link", "LinkStats"]

T = TypeVar("T")
UP, DOWN = 0, 1
"""Directions: client to upstream, upstream to client."""
_CHUNK = 64 * 1024
_QUEUED = 256
"""Chunks held per direction of a connection before it stops reading."""
_CONTROL_TIMEOUT = 30.0


@dataclass(frozen=True)
class LinkStats:
    connections: int
    resets: int
    """Connections aborted by :meth:`Link.reset`."""
    bytes: tuple[int, int]
    """Forwarded, by direction (UP, DOWN)."""
    delayed: int
    """Chunks held back by added latency, the rate limit or a clog."""


class _Connection:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.writers = (client, upstream)
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Close both sockets with RST (linger 0) and stop forwarding at once."""
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class Link:
    """One listening port forwarding to ``upstream``; made by :meth:`FaultProxy.link`."""

    def __init__(self, proxy: FaultProxy, upstream: tuple[str, int]) -> None:
        self._proxy = proxy
        self._upstream = upstream
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._latency = [0.0, 0.0]
        self._rate: float | None = None
        self._next_free = [0.0, 0.0]
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._stats = {"connections": 0, "resets": 0, "delayed": 0}
        self._bytes = [0, 0]
        self.address = ""

    # Controls, from any thread ------------------------------------------------------------------
    def latency(self, up: float, down: float | None = None) -> None:
        """Hold every chunk ``up`` seconds on its way upstream, ``down`` (default: the same) back."""

        def change() -> None:
            self._latency[:] = [up, up if down is None else down]

        self._proxy.call(change)

    def throttle(self, bytes_per_second: float | None) -> None:
        """Pace each direction to ``bytes_per_second`` (None: no limit)."""

        def change() -> None:
            self._rate = bytes_per_second

        self._proxy.call(change)

    def clog(self) -> None:
        """Stop forwarding in both directions; connections stay open and data is held, not lost."""
        self._proxy.call(self._flowing.clear)

    def reset(self) -> int:
        """Abort every current connection with RST; returns how many. New ones are accepted as usual."""
        return self._proxy.call(self._reset)

    def restore(self) -> None:
        """No latency, no limit, not clogged: held data flows on."""

        def normal() -> None:
            self._latency[:] = [0.0, 0.0]
            self._rate = None
            self._flowing.set()

        self._proxy.call(normal)

    def stats(self) -> LinkStats:
        return self._proxy.call(
            lambda: LinkStats(
                self._stats["connections"],
                self._stats["resets"],
                (self._bytes[0], self._bytes[1]),
                self._stats["delayed"],
            )
        )

    # The loop's side ---------------------------------------------------------------------------
    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"

    def _reset(self) -> int:
        aborted = list(self._connections)
        for connection in aborted:
            connection.abort()
        self._stats["resets"] += len(aborted)
        return len(aborted)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._stats["connections"] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()  # upstream unreachable: so is the link
            return
        connection = _Connection(writer, up_writer)
        self._connections.add(connection)
        lines: list[asyncio.Queue[tuple[float, bytes] | None]] = [asyncio.Queue(_QUEUED) for _ in range(2)]
        connection.tasks = [
            asyncio.ensure_future(self._read(reader, lines[UP], UP)),
            asyncio.ensure_future(self._write(lines[UP], up_writer, UP)),
            asyncio.ensure_future(self._read(up_reader, lines[DOWN], DOWN)),
            asyncio.ensure_future(self._write(lines[DOWN], writer, DOWN)),
        ]
        try:
            await asyncio.wait(connection.tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            if all(t.done() and not t.cancelled() and t.exception() is None for t in connection.tasks):
                for w in connection.writers:
                    w.close()  # both sides said goodbye: close as they did
            else:
                connection.abort()  # one side broke (or a reset): so does the other, as without a proxy
            self._connections.discard(connection)
            await asyncio.gather(*connection.tasks, return_exceptions=True)

    async def _read(
        self, reader: asyncio.StreamReader, line: asyncio.Queue[tuple[float, bytes] | None], direction: int
    ) -> None:
        """Stamp each chunk with the time it may leave; a full line stops reading (back pressure)."""
        loop = asyncio.get_running_loop()
        while data := await reader.read(_CHUNK):
            await line.put((loop.time() + self._latency[direction], data))
        await line.put(None)

    async def _write(
        self, line: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter, direction: int
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await line.get()) is not None:
            due, data = item
            held = due > loop.time()
            await asyncio.sleep(max(0.0, due - loop.time()))
            size = self._piece()
            for start in range(0, len(data), size):
                piece = data[start : start + size]
                if self._rate:
                    at = max(loop.time(), self._next_free[direction])
                    self._next_free[direction] = at + len(piece) / self._rate
                    held = held or at > loop.time()
                    await asyncio.sleep(at - loop.time())
                held = held or not self._flowing.is_set()
                await self._flowing.wait()
                writer.write(piece)
                self._bytes[direction] += len(piece)
                await writer.drain()
            self._stats["delayed"] += held
        if writer.can_write_eof():
            writer.write_eof()

    def _piece(self) -> int:
        """Throttled data leaves in pieces of ~20 ms worth, not one burst per chunk."""
        return max(256, int(self._rate / 50)) if self._rate else _CHUNK


class FaultProxy:
    """The proxy's loop thread and its links; close it (or use ``with``) to stop everything."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self._links: list[Link] = []

    def link(self, upstream: str) -> Link:
        """A new link to ``upstream`` (``host:port``); connect to its ``address``."""
        host, port = upstream.rsplit(":", 1)

        async def make() -> Link:
            link = Link(self, (host, int(port)))
            await link._open()
            return link

        link = self.run(make())
        self._links.append(link)
        return link

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the loop and return its result (controls change state only there)."""

        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_CONTROL_TIMEOUT)

    def close(self) -> None:
        """Abort every connection, close every port, stop the loop and its thread."""
        if self._loop.is_closed():
            return
        try:
            if self._thread.is_alive():
                self.run(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_CONTROL_TIMEOUT)
            if not self._thread.is_alive():
                self._loop.close()

    async def _shutdown(self) -> None:
        for link in self._links:
            await link._close()
        # Aborted connections end their handlers (cancelling those would upset asyncio's streams).
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            _, stuck = await asyncio.wait(others, timeout=_CONTROL_TIMEOUT / 2)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
