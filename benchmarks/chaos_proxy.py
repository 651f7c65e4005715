"""A loopback TCP forwarder that plays a bad network between an edge agent and its router:
`slow(delay_s)` holds every chunk from the router back, `cut()` drops every connection and
refuses new ones, `restore()` heals both, `close()` stops it. The one TCP fault proxy: the
chaos steps of `edgecascade bench soak` and the tests of a broken update link use it."""

from __future__ import annotations

import socket
import threading
import time

from edgecascade.processes import free_port


class ChaosProxy:
    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", free_port()))  # in --port-range when one is set
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: set[socket.socket] = set()
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self.delay_s = 0.0
        threading.Thread(target=self._accept, daemon=True, name="chaos-proxy").start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2.0)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_router: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_router and self.delay_s > 0:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                for sock in (src, dst):
                    self._open.discard(sock)
                    try:
                        sock.close()
                    except OSError:
                        pass

    def slow(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            sockets = list(self._open)
            self._open.clear()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def restore(self) -> None:
        self.delay_s = 0.0
        self._cut.clear()

    def close(self) -> None:
        self.cut()
        self._listener.close()
