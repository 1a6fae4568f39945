"""The front door of ``PortForwardTestSetup``: a process that accepts.

A driver's blocking ``cancel()`` (psycopg2's, psycopg 3's) keeps Python's
GIL while it connects, sends the cancel request and waits for the server to
close: a proxy thread in the same process could never forward it, and the
whole test process would hang.  So the listening socket lives in this
separate process, started by ``start_front_door()``::

    python reconnecting/testing/_frontdoor.py LISTENER CONTROL HOST PORT

It accepts each connection and looks at its first packet without reading
it (``MSG_PEEK``).  A cancel request it forwards itself to the server at
``HOST``/``PORT`` (a host starting with ``/`` is a unix socket directory),
and closes the client's socket once the server has closed its own, as
libpq expects.  Every other connection goes to the proxy untouched: its
descriptor is sent over ``CONTROL`` (a ``SOCK_SEQPACKET`` pair), for the
proxy's faults to apply.  On ``CONTROL``, the message ``stop`` closes the
listening socket (answered ``ok``), and end of file ends the process.

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

_CANCEL_REQUEST = struct.pack("!ii", 16, 80877102)  # length, code
_SECONDS = 5.0


def start_front_door(
    listener: socket.socket, host: str, port: int
) -> tuple[subprocess.Popen, socket.socket]:
    """Start the front door on *listener* (which the caller then closes);
    return the process and the proxy's end of the control pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)]
            + [str(listener.fileno()), str(theirs.fileno()), host, str(port)],
            pass_fds=(listener.fileno(), theirs.fileno()),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C for the tests is not for it
            cwd="/",
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


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


def _serve(client: socket.socket, control: socket.socket, target: tuple) -> None:
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
                socket.send_fds(control, [b"c"], [client.fileno()])
            except OSError:
                pass  # the proxy is gone
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
    listener = socket.socket(fileno=int(argv[0]))
    control = socket.socket(fileno=int(argv[1]))
    target = (argv[2], int(argv[3]))
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(control, selectors.EVENT_READ, "control")
    while True:
        for key, _ in selector.select():
            if key.data == "control":
                message = control.recv(16)
                if not message:
                    return 0  # the proxy is gone, or tore down
                if message == b"stop" and listener.fileno() != -1:
                    selector.unregister(listener)
                    listener.close()
                control.send(b"ok")
                continue
            try:
                client, _ = listener.accept()
            except OSError:  # the client gave up already
                continue
            client.setblocking(True)
            threading.Thread(
                target=_serve, args=(client, control, target), daemon=True
            ).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
