"""Run the app under uvicorn: blocking (the CLI, the demo) or in a background thread (tests)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0 picks a free one), named in the error if it is taken.

    The protocol is named explicitly: asyncio turns Nagle's algorithm off only on sockets
    whose ``proto`` is TCP, and a response written as headers then body would otherwise wait
    for the client's delayed ACK — about 40 ms on every request of a keep-alive connection.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(app: Any, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    return uvicorn.Server(config)


def serve_forever(app: Any, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted; logs the URL once the socket is listening."""
    serve_socket(app, bind(host, port))


def serve_socket(app: Any, sock: socket.socket) -> None:
    """Serve on an already bound socket until interrupted (Ctrl-C).

    The server owns its process, so FAISS is tuned for it here; library calls (and
    :func:`start_in_thread`, which runs inside someone else's process) leave it alone.
    """
    from opencir.index.tuning import configure_faiss

    configure_faiss()
    log.info("serving on %s (Ctrl-C to stop)", url_of(sock))
    _server(app, "warning").run(sockets=[sock])


@dataclass
class RunningServer:
    """A uvicorn server on a background thread; ``stop()`` shuts it down."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0
) -> RunningServer:
    """Start ``app`` on ``host:port`` in a daemon thread and wait until it accepts requests."""
    sock = bind(host, port)
    server = _server(app, "warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on {url_of(sock)} did not start within {timeout} s")
        time.sleep(0.02)
    return RunningServer(url_of(sock), server, thread)
