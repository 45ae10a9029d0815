"""A network partition between one agent and its collector, for real-process tests.

The agent is given :attr:`Partition.address` as its collector; connections
are forwarded to the real collector until :meth:`Partition.cut`. Then the
agent's side of every connection is reset and new connections are reset at
once (the agent sees a collector it cannot reach), while the collector's side
stays open and silent: the collector still counts the agent as registered,
as it would behind a real partition. :meth:`Partition.heal` closes those
stale connections and lets new ones through again.

One thread does all the forwarding under one lock, so a control call has
taken effect when it returns and no socket is closed under a reader.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading

_POLL = 0.05
_CHUNK = 64 * 1024


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0), as a dropped connection looks to its owner."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Partition:
    """Forwards 127.0.0.1:<port> to ``upstream`` (``host:port``) until cut; close it when done."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._peer: dict[socket.socket, socket.socket] = {}
        self._clients: set[socket.socket] = set()
        self._stale: list[socket.socket] = []
        self._is_cut = False
        self._stopping = False
        self.connections = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._run, name="partition", daemon=True)
        self._thread.start()

    # Controls -------------------------------------------------------------------------------------
    def cut(self) -> None:
        """Reset the agent's connections and refuse new ones; the collector's side is left hanging."""
        with self._lock:
            self._is_cut = True
            for client in list(self._clients):
                upstream = self._peer.pop(client)
                del self._peer[upstream]
                _reset(client)
                self._stale.append(upstream)
            self._clients.clear()

    def heal(self) -> None:
        """Close the hanging connections to the collector and forward new connections again."""
        with self._lock:
            self._is_cut = False
            for upstream in self._stale:
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_RDWR)
                upstream.close()
            self._stale.clear()

    def close(self) -> None:
        with self._lock:
            self._stopping = True
        self._thread.join(10.0)
        with self._lock:
            for sock in [*self._peer, *self._stale, self._listener]:
                sock.close()
            self._peer.clear()
            self._clients.clear()
            self._stale.clear()

    def __enter__(self) -> Partition:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # The forwarding thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                readable, _, _ = select.select([self._listener, *self._peer], [], [], _POLL)
                for sock in readable:
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._peer:  # an earlier one of this round may have closed it
                        self._forward(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        self.connections += 1
        if self._is_cut:
            self.refused += 1
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self._upstream, timeout=5.0)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        self._peer[client], self._peer[upstream] = upstream, client
        self._clients.add(client)

    def _forward(self, sock: socket.socket) -> None:
        other = self._peer[sock]
        try:
            data = sock.recv(_CHUNK)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        # One side closed or broke: so does the other, as without a forwarder in between.
        for s in (sock, other):
            del self._peer[s]
            self._clients.discard(s)
            _reset(s)
