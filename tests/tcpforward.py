"""A TCP forwarder on 127.0.0.1 whose open connections a test can cut all at once, as a network
blip or a load balancer's restart does, while new connections go through: watch streams break
mid-stream and clients have to reconnect."""

from __future__ import annotations

import socket
import struct
import threading
from types import TracebackType


class TcpForwarder:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._ended: set[socket.socket] = set()  # sockets whose incoming stream has ended
        self._acceptor = threading.Thread(target=self._accept, name="tcp-forwarder", daemon=True)

    def __enter__(self) -> TcpForwarder:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (Linux)
        self._listener.close()
        self._acceptor.join(timeout=5)
        self.cut()

    def cut(self) -> int:
        """Reset every open connection (both sides); returns how many connections were cut."""
        with self._lock:
            doomed, self._open = self._open, set()
        for sock in doomed:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
            except OSError:
                pass  # the peer had already gone
            sock.close()
        return len(doomed) // 2

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # pass the end of the stream on
        except OSError:
            return  # cut, or the other side went away
        with self._lock:  # both directions ended: the connection is over
            self._ended.add(source)
            over = sink in self._ended and source in self._open  # not cut meanwhile
            if over:
                self._open -= {source, sink}
                self._ended -= {source, sink}
        if over:
            source.close()
            sink.close()
