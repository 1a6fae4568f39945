"""The front door of ``PortForwardTestSetup``: a process that accepts.

A driver's blocking ``cancel()`` (psycopg2's, psycopg 3's) keeps Python's
GIL while it connects, sends the cancel request and waits for the server to
close: a proxy thread in the same process could never forward it, and the
whole test process would hang.  So the listening sockets live in this
separate process, one for all the proxies of a test process, started on
first use by ``open_door()``::

    python reconnecting/testing/_frontdoor.py CONTROL

``open_door()`` sends it a proxy's listening socket, the proxy's target and
one end of a ``SOCK_SEQPACKET`` pair, the proxy's *line*.  It accepts each
connection and looks at its first packet without reading it
(``MSG_PEEK``).  A cancel request it forwards itself to the target (a host
starting with ``/`` is a unix socket directory), and closes the client's
socket once the server has closed its own, as libpq expects.  Every other
connection goes to the proxy untouched, its descriptor sent over the line,
for the proxy's faults to apply.  ``close_door()`` sends ``stop`` on the
line and waits for ``ok``: the listening socket is closed by then.  The
process ends when the test process does (end of file on ``CONTROL``).

Stdlib only, so it runs by file path without the package being importable.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable

_CANCEL_REQUEST = struct.pack("!ii", 16, 80877102)  # length, code
_SECONDS = 5.0

_lock = threading.Lock()
_door: tuple[int, subprocess.Popen, socket.socket] | None = None  # pid, door, control


def _control() -> socket.socket:
    """The control socket of this process's front door, started if need be."""
    global _door
    if _door is not None and _door[0] == os.getpid() and _door[1].poll() is None:
        return _door[2]
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)]
            + [str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C for the tests is not for it
            cwd="/",
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    _door = (os.getpid(), process, ours)
    return ours


def open_door(listener: socket.socket, host: str, port: int) -> socket.socket:
    """Have the front door accept on *listener* (the caller then closes it)
    for a proxy of *host* and *port*; return the proxy's end of its line."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with _lock:
            control = _control()
            fds = [listener.fileno(), theirs.fileno()]
            socket.send_fds(control, [f"{port} {host}".encode()], fds)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return ours


def close_door(line: socket.socket, receive: Callable[[socket.socket], bytes]) -> None:
    """Have the front door stop listening for the proxy of *line* and wait
    until it has; *receive* takes each message meanwhile, and returns it."""
    line.setblocking(True)
    try:
        line.send(b"stop")
        while receive(line) != b"ok":
            pass
    except OSError:
        pass  # the front door is gone: nobody listens any more
    finally:
        line.setblocking(False)


# -- the front door process --------------------------------------------------------


def _connect(host: str, port: int) -> socket.socket:
    if host.startswith("/"):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.settimeout(_SECONDS)
        try:
            server.connect(os.path.join(host, f".s.PGSQL.{port}"))
        except OSError:
            server.close()
            raise
        return server
    return socket.create_connection((host, port), _SECONDS)


def _serve(client: socket.socket, line: socket.socket, target: tuple) -> None:
    """Hand *client* to the proxy, or forward its cancel request."""
    with client:
        try:
            client.settimeout(_SECONDS)
            first = client.recv(8, socket.MSG_PEEK | socket.MSG_WAITALL)
        except TimeoutError:
            first = b""  # a quiet client: the proxy's business
        except OSError:
            return
        if first != _CANCEL_REQUEST:
            try:
                socket.send_fds(line, [b"c"], [client.fileno()])
            except OSError:
                pass  # the proxy stopped listening meanwhile
            return
        try:
            request = client.recv(16, socket.MSG_WAITALL)
            with _connect(*target) as server:
                server.sendall(request)
                server.settimeout(_SECONDS)
                while server.recv(64):  # the server closes when done
                    pass
        except OSError:
            pass  # the client sees its connection closed either way


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[0]))
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    lines: dict[socket.socket, socket.socket] = {}  # line -> listener
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is control:
                message, fds, _, _ = socket.recv_fds(control, 4096, 2)
                if not message:
                    return 0  # the test process is gone
                listener, line = (socket.socket(fileno=fd) for fd in fds)
                port, host = message.decode().split(" ", 1)
                listener.setblocking(False)
                target = (host, int(port))
                selector.register(listener, selectors.EVENT_READ, (line, target))
                selector.register(line, selectors.EVENT_READ)
                lines[line] = listener
            elif sock in lines:  # a proxy's line: stop, or the proxy is gone
                listener = lines.pop(sock)
                selector.unregister(listener)
                listener.close()
                selector.unregister(sock)
                try:
                    if sock.recv(16) == b"stop":
                        sock.send(b"ok")
                except OSError:
                    pass
                sock.close()
            else:
                try:
                    client, _ = sock.accept()
                except OSError:  # the client gave up already
                    continue
                client.setblocking(True)
                line, target = key.data
                threading.Thread(
                    target=_serve, args=(client, line, target), daemon=True
                ).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
