"""A TCP proxy on loopback that a test can cut and restore: the Machine database "unreachable for a minute"
(issue 16, fault d) without touching the real server.

``cut()`` closes every connection in flight (both ends, as a failover or a network partition that resets them
does) and closes the listening socket, so new connections are refused (ECONNREFUSED) until ``restore()`` listens
again on the same port. Threads, not asyncio: the proxy lives beside a synchronous test for a few minutes and
carries a handful of connections.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self

#: Seconds the accept loop waits before checking whether it should stop.
ACCEPT_POLL = 0.2
#: Bytes read at once from either end.
CHUNK = 65536


class TCPProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; :meth:`cut` and :meth:`restore` the path.

    :param target: ``(host, port)`` of the real server
    :param port: the port to listen on (default: one the system picks, kept across :meth:`restore`)
    """

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.port = port
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._accepting: threading.Thread | None = None
        #: Connections accepted and forwarded, and connections cut, since the proxy was made.
        self.accepted = 0
        self.cut_connections = 0
        self.restore()

    @property
    def up(self) -> bool:
        return self._listener is not None

    def restore(self) -> None:
        """Listen again (on the same port) and forward new connections."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL)
        self.port = listener.getsockname()[1]
        self._stop = threading.Event()
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener, self._stop), daemon=True)
        self._accepting.start()

    def cut(self) -> int:
        """Refuse new connections and reset every connection in flight; return how many were cut."""
        listener, self._listener = self._listener, None
        self._stop.set()
        if self._accepting is not None:
            self._accepting.join(timeout=5)
        if listener is not None:
            listener.close()
        with self._lock:
            live, self._sockets = list(self._sockets), set()
        for sock in live:
            _close(sock)
        pairs = len(live) // 2
        self.cut_connections += pairs
        return pairs

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if stop.is_set():
                    _close(client)
                    _close(upstream)
                    return
                self._sockets |= {client, upstream}
                self.accepted += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(sink)
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    """Reset-like close: both directions shut (waking a thread blocked in ``recv``), then closed."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
