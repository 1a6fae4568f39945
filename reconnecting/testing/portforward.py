"""A fault-injecting TCP port-forward proxy, for tests that need real outages.

``PortForwardTestSetup`` listens on the loopback interface and forwards each
connection to a PostgreSQL server, in the spirit of toxiproxy but in-process
and pure Python.  On request it stops listening, drops or resets the
connections, swallows bytes, cuts a stream after some bytes, adds latency, or
cuts a connection at the very moment of a ``COMMIT``.

A small process of its own, the front door
(``reconnecting/testing/_frontdoor.py``), holds the listening socket: it
forwards cancel requests to the server itself, since a driver's blocking
``cancel()`` holds the GIL until the server has answered, and hands every
other connection to the proxy.  In the proxy, one thread runs a selector
loop over non-blocking sockets.  (Measured: it
costs less per round trip than a thread per direction, because the thread
that forwards a query also receives the reply.)  The fault methods run in
the caller's thread, under the same lock as the loop's work.  Each
connection's bytes go through ``reconnecting/testing/_forwarding.py``;
``partition()`` is in ``reconnecting/testing/_partition.py``.
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import threading
import time
from types import TracebackType

from reconnecting.testing._forwarding import (
    READ,
    WRITE,
    Link,
    Switchboard,
    shutdown,
)
from reconnecting.testing._frontdoor import close_door, open_door
from reconnecting.testing._partition import Partition

_JOIN_SECONDS = 5.0
_CONNECT_SECONDS = 5.0


class PortForwardTestSetup:
    """A TCP proxy on the loopback interface in front of a PostgreSQL server.

    Point clients at ``host`` and ``port`` instead of the server, then break
    the traffic with the fault methods.  By default the target is the test
    server of ``reconnecting.testing.pgsql.PgTestSetup``, looked up by
    ``setUp()``; a target host starting with ``/`` names the directory of
    the server's Unix-domain socket.  Typical use::

        proxy = PortForwardTestSetup()
        proxy.setUp()
        conn = psycopg2.connect(host=proxy.host, port=proxy.port, ...)
        proxy.drop()          # conn's next statement fails
        proxy.tearDown()

    It is also a context manager that calls ``setUp()`` and ``tearDown()``.
    Fault modes apply to every forwarded connection, current and new, until
    ``restore()`` or ``tearDown()``.  ``TCP_NODELAY`` is on for both legs.

    :param target_host: the server's host; ``None`` for the test server's.
    :param target_port: the server's port; ``None`` for the test server's.
    :param host: the address to listen on: ``localhost`` or a loopback IP
        address; anything else raises ``ValueError``.
    :param port: the port to listen on; ``0`` picks a free port on the first
        ``setUp()`` and keeps it from then on, so that a DSN stays valid.
    """

    def __init__(
        self,
        target_host: str | None = None,
        target_port: int | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        try:
            address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
        except ValueError:
            address = None
        if address is None or not address.is_loopback:
            raise ValueError(f"host must be a loopback address, not {host!r}")
        self._family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self._address = str(address)
        self._explicit_target = (target_host, target_port)
        #: The server's host, as given or as found by ``setUp()``.
        self.target_host: str | None = target_host
        #: The server's port, as given or as found by ``setUp()``.
        self.target_port: int | None = target_port
        #: The address the proxy listens on.
        self.host: str = host
        #: The port the proxy listens on (chosen by the first ``setUp()``).
        self.port: int = port
        #: Connections accepted since the proxy was made (cancel requests,
        #: which the front door forwards itself, not counted).
        self.accepted: int = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._board = Switchboard()  # the links' view of this proxy
        self._partition = Partition(self._address, address.version == 6)

    @property
    def connections(self) -> int:
        """The number of connections being forwarded now."""
        return len(self._board.links)

    @property
    def delayed_bytes(self) -> int:
        """How many bytes ``latency()`` holds back right now, both ways."""
        with self._lock:
            flows = self._board.waiting
            return sum(len(data) for flow in flows for _, data in flow.delayed)

    @property
    def commit_cuts(self) -> int:
        """How many times the ``cut_on_commit()`` trap has fired."""
        return self._board.commit_cuts

    def __repr__(self) -> str:
        board = self._board
        trap = board.commit_trap
        notes = [
            "listening" if self._thread is not None else "stopped",
            f"{self.connections} connections" if board.links else "",
            "blackhole" if board.blackhole else "",
            "partitioned" if self._partition.rules else "",
            f"latency={board.latency}" if board.latency else "",
            "" if board.cut_after is None else f"cut_after={board.cut_after}",
            "" if trap is None else f"cut_on_commit(deliver={trap})",
        ]
        target = f"{self.target_host}:{self.target_port}"
        if self.target_host is None:
            target = "the test server"
        state = ", ".join(filter(None, notes))
        return f"<PortForwardTestSetup {self.host}:{self.port} -> {target} {state}>"

    def __enter__(self) -> PortForwardTestSetup:
        self.setUp()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.tearDown()

    def setUp(self) -> None:
        """Start listening and forwarding; does nothing if already listening.

        :raises OSError: if the port cannot be bound (taken by someone else).
        """
        if self._thread is not None:
            return
        target_host, target_port = self._explicit_target
        if target_host is None or target_port is None:
            from reconnecting.testing.pgsql import PgTestSetup  # only needed here

            server = PgTestSetup()
            target_host = server.host if target_host is None else target_host
            target_port = server.port if target_port is None else target_port
        self.target_host, self.target_port = target_host, int(target_port)
        listener = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            # Rebinding the same port next time must not wait for TIME_WAIT.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        try:
            self._line = open_door(listener, self.target_host, self.target_port)
        finally:
            listener.close()  # the front door's now: it alone stops listening
        self._handed: list[socket.socket] = []  # received while stopping
        # tearDown() writes to the wake-up pair to end the loop's select().
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = False
        self._selector = self._board.selector = selectors.DefaultSelector()
        self._selector.register(self._line, READ, self._receive)
        self._selector.register(self._wake_r, READ, self._drain)
        self._thread = threading.Thread(
            target=self._run, name=f"portforward-{self.port}", daemon=True
        )
        self._thread.start()

    def tearDown(self) -> None:
        """Stop listening, close every forwarded connection, ``restore()``.

        Clients see their connection closed by the server (psycopg2:
        ``server closed the connection unexpectedly``) and new connections
        are refused, until the next ``setUp()``.  Waits for the proxy's
        thread to end; safe to call twice.

        :raises RuntimeError: if the thread did not end within 5 seconds.
        """
        thread = self._thread
        if thread is not None:
            with self._lock:
                self._stopping = True
                self._wake_w.send(b"x")
            thread.join(_JOIN_SECONDS)
            if thread.is_alive():
                raise RuntimeError(f"{self!r}: the forwarding thread did not stop")
            with self._lock:
                for link in list(self._board.links):
                    link.close()
                close_door(self._line, self._take)  # new connections refused
                for sock in (self._line, self._wake_r, self._wake_w, *self._handed):
                    sock.close()
                self._handed = []
                self._selector.close()
                self._board.selector = None
                self._thread = None
        self.restore()

    def drop(self) -> None:
        """Close every forwarded connection, both ways, and keep listening.

        Client and server see an orderly close (FIN): the client's next
        statement fails with ``server closed the connection unexpectedly``.
        New connections work.
        """
        with self._lock:
            for link in list(self._board.links):
                link.close()

    def reset(self) -> None:
        """Abort every forwarded connection with a TCP reset to the client.

        The client's socket gets a RST with no FIN before it, and fails with
        ``ECONNRESET`` ("Connection reset by peer"); libpq reports that too
        as ``server closed the connection unexpectedly``.  The server sees
        an orderly close.  The proxy keeps listening.
        """
        with self._lock:
            for link in list(self._board.links):
                link.close(rst=True)

    def blackhole(self) -> None:
        """Let no byte through: connections stay open but traffic stops.

        Bytes read in either direction, on current and new connections, are
        discarded (not held back), so a connection that was blackholed stays
        broken after ``restore()``.  A client waits for its reply until its
        own timeout; ``drop()`` releases it.  This blackhole is in user
        space: the proxy's kernel still acknowledges every byte, so TCP
        keepalives and ``tcp_user_timeout`` on the client cannot detect it;
        a truly half-open link needs packets dropped by the kernel.
        """
        self._board.blackhole = True

    def latency(self, seconds: float) -> None:
        """Deliver every chunk of data ``seconds`` after it arrives.

        Applies both ways, so a round trip takes ``2 * seconds`` longer.
        ``0`` disables.
        """
        if seconds < 0:
            raise ValueError("latency must be 0 or more seconds")
        self._board.latency = float(seconds)

    def cut_after(self, nbytes: int) -> None:
        """Cut every connection after ``nbytes`` more bytes from the server.

        Current connections count from now, new ones from their start.  The
        proxy forwards exactly ``nbytes`` bytes to the client, then closes
        both sides: a large result breaks mid-stream with ``server closed
        the connection unexpectedly``.
        """
        if nbytes < 0:
            raise ValueError("nbytes must be 0 or more")
        with self._lock:
            self._board.cut_after = nbytes
            for link in self._board.links:
                link.cut_at = link.sent + nbytes

    def cut_on_commit(self, deliver: bool = True, *, go_down: bool = False) -> None:
        """Cut the connection that sends the next ``COMMIT``, once.

        The trap watches what clients send for a simple-protocol Query whose
        SQL starts with ``COMMIT`` or ``END``.  With ``deliver`` true the
        proxy sends it on, discards the server's reply, and closes both
        sides once the reply is complete: the transaction is committed but
        the client only sees ``server closed the connection unexpectedly``
        (an in-doubt commit).  With ``deliver`` false the ``COMMIT`` never
        reaches the server, which rolls the transaction back when the
        connection closes; the client sees the same error.  Messages sent
        before the ``COMMIT`` are forwarded.  The trap assumes the client
        has the replies to its earlier messages before it sends ``COMMIT``,
        as libpq does, and cannot see into TLS connections.

        With ``go_down`` true the proxy also stops listening when the trap
        fires, before the client learns of the cut, so that nobody can
        reconnect to ask what became of the commit (new connections are
        refused) until ``tearDown()`` and ``setUp()``.
        """
        with self._lock:
            self._board.commit_trap = bool(deliver)
            self._board.on_commit_cut = self._stop_listening if go_down else None

    def restore(self) -> None:
        """End blackhole, latency, ``cut_after()``, an unfired commit trap, and
        a ``partition()``.

        Traffic from now on goes through unharmed; bytes already discarded
        stay lost, and delayed ones are still delivered.
        """
        with self._lock:
            board = self._board
            board.blackhole, board.latency = False, 0.0
            board.cut_after = board.commit_trap = None
            for link in board.links:
                link.cut_at = None
        self.heal()

    def partition(self) -> None:
        """Make the kernel drop every packet to and from the proxy's port.

        Unlike ``blackhole()``, nothing acknowledges the client's bytes any
        more, so this is a truly half-open network, as when a cable is
        pulled or a firewall forgets a connection: the client's sends are
        retransmitted unanswered, no reply or keepalive answer comes back,
        and new connections hang in ``connect()``.  Nobody is told; only the
        client's own timeouts (``tcp_user_timeout``, keepalives,
        ``connect_timeout``) end the wait.  With libpq's and Linux's
        defaults, a call that sends into the partition waits about 15
        minutes of retransmissions, and one that was waiting for its reply
        over two hours, until the keepalives give up.

        Two ``iptables`` rules on the loopback interface drop the TCP
        packets with the proxy's address and port as destination or source;
        the rest of the loopback traffic, including the proxy's own
        connections to the server, is untouched.  ``heal()`` removes them,
        as do ``restore()``, ``tearDown()`` and the end of the process; a
        process killed outright leaves them behind, and ``iptables -S
        INPUT`` shows them with the comment ``reconnecting partition``.

        :raises PermissionError: when not permitted: dropping packets in the
            kernel needs root (CAP_NET_ADMIN).
        :raises RuntimeError: if ``iptables`` is missing or fails, or the
            proxy has no port yet (call ``setUp()`` first).
        """
        if not self.port:
            raise RuntimeError("the proxy has no port yet: call setUp() first")
        self._partition.drop(self.port)

    def heal(self) -> None:
        """Remove the rules of ``partition()``; does nothing without them.

        Packets flow again.  Connections whose client has not given up yet
        carry on when TCP next retransmits; those the client's timeouts have
        ended stay broken.

        :raises PermissionError: see ``partition()``.
        :raises RuntimeError: if ``iptables`` fails to remove a rule.
        """
        self._partition.heal()

    @staticmethod
    def partition_unavailable(ipv6: bool = False) -> str | None:
        """Tell why ``partition()`` cannot work here, or ``None`` if it can.

        Asks ``iptables`` to list its rules, which needs the same rights as
        changing them.  Handy to skip a test::

            why = PortForwardTestSetup.partition_unavailable()

            @pytest.mark.skipif(why is not None, reason=str(why))
            def test_half_open_network(): ...
        """
        return Partition.unavailable(ipv6)

    def _stop_listening(self) -> None:
        """Refuse new connections until the next ``setUp()`` (lock held)."""
        close_door(self._line, self._take)

    def _run(self) -> None:
        selector = self._selector
        while True:
            with self._lock:
                timeout = None
                if self._board.waiting:
                    due = min(flow.delayed[0][0] for flow in self._board.waiting)
                    timeout = max(due - time.monotonic(), 0)
            events = selector.select(timeout)
            with self._lock:
                if self._stopping:
                    return
                for key, mask in events:
                    if callable(key.data):
                        key.data()
                        continue
                    link, rflow, wflow = key.data
                    if mask & WRITE and not link.closed:
                        link.flush(wflow)
                    if mask & READ and not link.closed:
                        link.read(rflow)
                if self._board.waiting:
                    self._deliver_delayed()

    def _deliver_delayed(self) -> None:
        now = time.monotonic()
        waiting = self._board.waiting
        for flow in list(waiting):
            link = flow.link
            while flow.delayed and flow.delayed[0][0] <= now and not link.closed:
                link.write(flow, flow.delayed.popleft()[1])
            if not flow.delayed:
                waiting.discard(flow)
                if link.ending and not link.closed:
                    link.end()

    def _drain(self) -> None:
        """Empty the wake-up socket (only ``tearDown()`` writes to it)."""
        try:
            self._wake_r.recv(64)
        except OSError:
            pass

    def _take(self, line: socket.socket) -> bytes:
        """Receive one message from the front door; keep a connection it
        hands over for ``_receive()``."""
        message, fds, _, _ = socket.recv_fds(line, 16, 4)
        self._handed += [socket.socket(fileno=fd) for fd in fds]
        if not message:
            raise OSError("the front door closed")
        return message

    def _receive(self) -> None:
        """Take the connections the front door hands over."""
        try:
            self._take(self._line)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._selector.unregister(self._line)  # it is gone: stop listening
        handed, self._handed = self._handed, []
        for client in handed:
            self._accept(client)

    def _accept(self, client: socket.socket) -> None:
        self.accepted += 1
        try:
            server = self._connect()
        except OSError:  # the server is down: so is this connection
            shutdown(client, socket.SHUT_RDWR)
            client.close()
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setblocking(False)
        self._board.links.add(Link(self._board, client, server))

    def _connect(self) -> socket.socket:
        host, port = self.target_host, self.target_port
        assert host is not None, "setUp() sets the target"
        if host.startswith("/"):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                server.settimeout(_CONNECT_SECONDS)
                server.connect(os.path.join(host, f".s.PGSQL.{port}"))
            except OSError:
                server.close()
                raise
        else:
            server = socket.create_connection((host, port), _CONNECT_SECONDS)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.setblocking(False)
        return server
