"""A fault-injecting TCP port-forward proxy, for tests that need real outages.

``PortForwardTestSetup`` listens on the loopback interface and forwards each
connection to a PostgreSQL server, in the spirit of toxiproxy but in-process
and pure Python.  On request it stops listening, drops or resets the
connections, swallows bytes, cuts a stream after some bytes, adds latency, or
cuts a connection at the very moment of a ``COMMIT``.

One thread runs a selector loop over non-blocking sockets.  (Measured: it
costs less per round trip than a thread per direction, because the thread
that forwards a query also receives the reply.)  The fault methods run in
the caller's thread, under the same lock as the loop's work.
"""

from __future__ import annotations

import atexit
import collections
import ipaddress
import os
import selectors
import shutil
import socket
import struct
import subprocess
import threading
import time
from types import TracebackType

_JOIN_SECONDS = 5.0
_CONNECT_SECONDS = 5.0
_CHUNK = 65536
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, timeout 0: close() sends RST
_INT32 = struct.Struct("!i")
_STARTUP = struct.Struct("!ii")  # length, then protocol version or request code
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104
_QUERY, _READY = ord("Q"), ord("Z")
_ANSWERED = frozenset(b"QSF")  # Query, Sync, FunctionCall: one ReadyForQuery each


# partition(): iptables rules, and the proxies that have some in place.
_NO_ROOT = "dropping packets in the kernel needs root (CAP_NET_ADMIN)"
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
_partitioned: set[PortForwardTestSetup] = set()


def _firewall(ipv6: bool) -> str:
    """Return the path of iptables (or ip6tables); RuntimeError if missing."""
    name = "ip6tables" if ipv6 else "iptables"
    path = os.environ.get("PATH", os.defpath) + os.pathsep + _SBIN
    found = shutil.which(name, path=path)
    if found is None:
        raise RuntimeError(
            f"partition() needs {name} to drop packets in the kernel: install it"
            " (Debian: apt-get install iptables)"
        )
    return found


def _run_firewall(ipv6: bool, *args: str) -> None:
    """Run iptables; PermissionError or RuntimeError with its message."""
    command = [_firewall(ipv6), "-w", *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode == 0:
        return
    message = (result.stderr or result.stdout).strip()
    denied = ("permission denied", "operation not permitted", "must be root")
    if any(text in message.lower() for text in denied):
        raise PermissionError(f"{_NO_ROOT}: {message}")
    raise RuntimeError(f"{' '.join(command)} failed: {message}")


@atexit.register
def _heal_all() -> None:
    # Never leave a rule behind, even when a test forgot heal() and tearDown().
    for proxy in list(_partitioned):
        try:
            proxy.heal()
        except Exception:
            pass


def _shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:  # the peer may be gone already
        pass


def _is_commit(sql: bytes) -> bool:
    return sql.lstrip().upper().startswith((b"COMMIT", b"END"))


class _Flow:
    """The bytes going one way, and those waiting to be sent."""

    def __init__(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        self.link, self.src, self.dst = link, src, dst
        self.out = bytearray()  # not yet accepted by ``dst``
        self.delayed: collections.deque[tuple[float, bytes]] = collections.deque()

    def idle(self) -> bool:
        return not self.out and not self.delayed


class _Link:
    """One forwarded connection.  Every method runs under the proxy's lock."""

    def __init__(
        self, proxy: PortForwardTestSetup, client: socket.socket, server: socket.socket
    ) -> None:
        self.proxy, self.client, self.server = proxy, client, server
        self.up, self.down = _Flow(self, client, server), _Flow(self, server, client)
        self.closed = self.ending = False
        self.sent = 0  # bytes forwarded to the client
        self.cut_at = proxy._cut_after  # value of ``sent`` at which to cut
        self.swallow = 0  # commit trap: ReadyForQuery messages still to discard
        # Client -> server framing: bytes left of the current message (and
        # whether the server answers it), its start if unfinished, TLS.
        self._skip, self._answers = 0, False
        self._tail, self._unsent = b"", 0
        self._startup, self._opaque = True, False
        # Server -> client framing, only needed while swallowing.
        self._s_tail, self._s_skip = b"", 0
        self._masks = {client: 0, server: 0}
        self.update()

    def update(self) -> None:
        """Select reads unless the other side is backed up, writes if due."""
        for sock, rflow, wflow in (
            (self.client, self.up, self.down),
            (self.server, self.down, self.up),
        ):
            reads = 0 if self.ending or rflow.out else _READ
            writes = _WRITE if wflow.out else 0
            self._want(sock, reads | writes, (self, rflow, wflow))

    def _want(self, sock: socket.socket, mask: int, data: tuple) -> None:
        old, selector = self._masks[sock], self.proxy._selector
        if mask != old:
            if not old:
                selector.register(sock, mask, data)
            elif not mask:
                selector.unregister(sock)
            else:
                selector.modify(sock, mask, data)
            self._masks[sock] = mask

    def close(self, rst: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self._want(self.client, 0, ())
        self._want(self.server, 0, ())
        if rst:
            try:
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:  # already reset by the client: nothing to abort
                pass
        else:  # FIN now: close() alone sends RST if bytes are left unread
            _shutdown(self.client, socket.SHUT_RDWR)
        _shutdown(self.server, socket.SHUT_RDWR)
        self.client.close()
        self.server.close()
        self.proxy._links.discard(self)
        self.proxy._waiting.difference_update((self.up, self.down))

    def end(self) -> None:
        """Close once what is on its way has been delivered."""
        self.ending = True
        if self.up.idle() and self.down.idle():
            self.close()
        else:
            self.update()

    def read(self, flow: _Flow) -> None:
        try:
            data = flow.src.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self.end()
        proxy = self.proxy
        if flow is self.up:
            if proxy._blackhole or self.swallow:
                self._opaque = True  # bytes lost: the framing is lost too
                return
            data, commit, deliver, answered = self._frame(data)
            if commit is not None:
                if deliver:  # swallow the replies to it and to its companions
                    self.swallow = answered + 1
                    data += commit
                else:
                    self.ending = True  # only what came before it goes
        else:
            if self.swallow:
                if self._swallow(data):
                    self.close()  # the server has answered the COMMIT: cut
                return
            if proxy._blackhole:
                return
            if self.cut_at is not None and self.cut_at - self.sent <= len(data):
                data = data[: max(self.cut_at - self.sent, 0)]
                self.ending = True
            self.sent += len(data)
        if data and proxy._latency:
            flow.delayed.append((time.monotonic() + proxy._latency, data))
            proxy._waiting.add(flow)
        elif data:
            self.write(flow, data)
        if self.ending and not self.closed:
            self.end()

    def write(self, flow: _Flow, data: bytes) -> None:
        if not flow.out:
            try:
                sent = flow.dst.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return self.close()
            if sent == len(data):
                return
            flow.out += data[sent:]
            self.update()
        else:
            flow.out += data

    def flush(self, flow: _Flow) -> None:
        try:
            sent = flow.dst.send(flow.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.close()
        del flow.out[:sent]
        if not flow.out and self.ending:
            self.end()
        elif not flow.out:
            self.update()

    def _frame(self, data: bytes) -> tuple[bytes, bytes | None, bool, int]:
        """Follow the client's PostgreSQL messages, to trap a COMMIT.

        Returns the bytes to forward now, the trapped COMMIT message (or
        None), whether to deliver it, and how many of the messages forwarded
        the server answers with a ReadyForQuery.  Only while the trap is
        armed is a partial header or Query held back (the client always
        finishes a message it has begun); otherwise bytes go on at once.
        """
        if self._opaque:
            return data, None, False, 0
        if self._skip >= len(data):  # fast path: inside a long message
            self._skip -= len(data)
            return data, None, False, 0
        # _tail: the start of an unfinished message, of which the last
        # _unsent bytes were held back.
        buf = self._tail + data
        pos, end, sent = self._skip, len(buf), len(self._tail) - self._unsent
        answered = int(bool(pos) and self._answers)
        armed = self.proxy._commit_trap is not None
        while pos < end:
            if self._startup:  # untyped packets: length, then a code
                if end - pos < 8:
                    break
                length, code = _STARTUP.unpack_from(buf, pos)
                if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                    answers = False  # answered by one byte, then a new packet
                elif code >> 16 == 3 and 8 <= length < 10000:
                    answers, self._startup = True, False
                else:  # TLS, GSS encryption, a cancel request: not for us
                    self._opaque = True
                    return buf[sent:], None, False, answered
                stop = pos + length
            else:
                if end - pos < 5:
                    break
                kind, length = buf[pos], _INT32.unpack_from(buf, pos + 1)[0]
                if length < 4:
                    self._opaque = True
                    return buf[sent:], None, False, answered
                stop, answers = pos + 1 + length, kind in _ANSWERED
                if armed and kind == _QUERY and pos >= sent:
                    if stop > end:
                        break  # hold the query back until it is whole
                    if _is_commit(buf[pos + 5 : stop - 1]):
                        deliver = self.proxy._claim_commit()
                        if deliver is not None:
                            return buf[sent:pos], buf[pos:stop], deliver, answered
            if stop > end:
                self._skip, self._answers = stop - end, answers
                self._tail, self._unsent = b"", 0
                return buf[sent:], None, False, answered
            answered += answers
            pos = stop
        upto = max(pos, sent) if armed else end
        self._skip, self._tail, self._unsent = 0, buf[pos:], end - upto
        return buf[sent:upto], None, False, answered

    def _swallow(self, data: bytes) -> bool:
        """Discard server bytes; True once the awaited replies are all in."""
        buf, self._s_tail = self._s_tail + data, b""
        pos, end = self._s_skip, len(buf)
        while end - pos >= 5:
            length = _INT32.unpack_from(buf, pos + 1)[0]
            if length < 4:
                return True  # not PostgreSQL framing: give up and cut now
            if buf[pos] == _READY:
                self.swallow -= 1
                if not self.swallow:
                    return True
            pos += 1 + length
        self._s_skip, self._s_tail = max(pos - end, 0), buf[pos:]
        return False


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
        #: Connections accepted since the proxy was made.
        self.accepted: int = 0
        #: How many times the ``cut_on_commit()`` trap has fired.
        self.commit_cuts: int = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._links: set[_Link] = set()
        self._waiting: set[_Flow] = set()  # flows with delayed chunks
        self._blackhole = False
        self._latency = 0.0
        self._cut_after: int | None = None
        self._commit_trap: bool | None = None  # armed: whether to deliver
        self._go_down = False  # stop listening when the trap fires
        self._partition_lock = threading.Lock()
        self._rules: list[list[str]] = []  # iptables rules of partition()

    @property
    def connections(self) -> int:
        """The number of connections being forwarded now."""
        return len(self._links)

    def __repr__(self) -> str:
        trap = self._commit_trap
        notes = [
            "listening" if self._thread is not None else "stopped",
            f"{self.connections} connections" if self._links else "",
            "blackhole" if self._blackhole else "",
            "partitioned" if self._rules else "",
            f"latency={self._latency}" if self._latency else "",
            "" if self._cut_after is None else f"cut_after={self._cut_after}",
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
        """Start listening and forwarding.

        :raises RuntimeError: if already set up.
        :raises OSError: if the port cannot be bound (taken by someone else).
        """
        if self._thread is not None:
            raise RuntimeError(f"{self!r} is already set up; call tearDown() first")
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
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        # tearDown() writes to the wake-up pair to end the loop's select().
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._listener, self._stopping = listener, False
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, _READ, self._accept)
        self._selector.register(self._wake_r, _READ, self._drain)
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
                for link in list(self._links):
                    link.close()
                for sock in (self._listener, self._wake_r, self._wake_w):
                    sock.close()
                self._selector.close()
                self._thread = None
        self.restore()

    def drop(self) -> None:
        """Close every forwarded connection, both ways, and keep listening.

        Client and server see an orderly close (FIN): the client's next
        statement fails with ``server closed the connection unexpectedly``.
        New connections work.
        """
        with self._lock:
            for link in list(self._links):
                link.close()

    def reset(self) -> None:
        """Abort every forwarded connection with a TCP reset to the client.

        The client's socket gets a RST with no FIN before it, and fails with
        ``ECONNRESET`` ("Connection reset by peer"); libpq reports that too
        as ``server closed the connection unexpectedly``.  The server sees
        an orderly close.  The proxy keeps listening.
        """
        with self._lock:
            for link in list(self._links):
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
        self._blackhole = True

    def latency(self, seconds: float) -> None:
        """Deliver every chunk of data ``seconds`` after it arrives.

        Applies both ways, so a round trip takes ``2 * seconds`` longer.
        ``0`` disables.
        """
        if seconds < 0:
            raise ValueError("latency must be 0 or more seconds")
        self._latency = float(seconds)

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
            self._cut_after = nbytes
            for link in self._links:
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
            self._commit_trap = bool(deliver)
            self._go_down = go_down

    def restore(self) -> None:
        """End blackhole, latency, ``cut_after()``, an unfired commit trap, and
        a ``partition()``.

        Traffic from now on goes through unharmed; bytes already discarded
        stay lost, and delayed ones are still delivered.
        """
        with self._lock:
            self._blackhole, self._latency = False, 0.0
            self._cut_after = self._commit_trap = None
            for link in self._links:
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
        ipv6 = self._family == socket.AF_INET6
        label = f"reconnecting partition of {self._address} port {self.port}"
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", end, self._address, port, str(self.port)]
            + ["-m", "comment", "--comment", label, "-j", "DROP"]
            for end, port in (("-d", "--dport"), ("-s", "--sport"))
        ]
        with self._partition_lock:
            if self._rules:
                return
            try:
                for rule in rules:
                    _run_firewall(ipv6, "-I", *rule)
                    self._rules.append(rule)
            except BaseException:
                self._remove_rules(ipv6)  # all or nothing
                raise
            _partitioned.add(self)

    def heal(self) -> None:
        """Remove the rules of ``partition()``; does nothing without them.

        Packets flow again.  Connections whose client has not given up yet
        carry on when TCP next retransmits; those the client's timeouts have
        ended stay broken.

        :raises PermissionError: see ``partition()``.
        :raises RuntimeError: if ``iptables`` fails to remove a rule.
        """
        with self._partition_lock:
            self._remove_rules(self._family == socket.AF_INET6)

    def _remove_rules(self, ipv6: bool) -> None:
        """Remove the partition's rules (the partition lock is held)."""
        problem = None
        for rule in list(self._rules):
            try:
                _run_firewall(ipv6, "-D", *rule)
            except (OSError, RuntimeError) as exc:
                problem = problem or exc
            else:
                self._rules.remove(rule)
        if not self._rules:
            _partitioned.discard(self)
        if problem is not None:
            raise problem

    @staticmethod
    def partition_unavailable(ipv6: bool = False) -> str | None:
        """Tell why ``partition()`` cannot work here, or ``None`` if it can.

        Asks ``iptables`` to list its rules, which needs the same rights as
        changing them.  Handy to skip a test::

            why = PortForwardTestSetup.partition_unavailable()

            @pytest.mark.skipif(why is not None, reason=str(why))
            def test_half_open_network(): ...
        """
        try:
            _run_firewall(ipv6, "-S", "INPUT")
        except (OSError, RuntimeError) as exc:
            return str(exc)
        return None

    def _claim_commit(self) -> bool | None:
        """Disarm the trap (the lock is held); None if it was not armed."""
        deliver, self._commit_trap = self._commit_trap, None
        if deliver is not None:
            self.commit_cuts += 1
            if self._go_down:
                self._selector.unregister(self._listener)
                self._listener.close()
        return deliver

    def _run(self) -> None:
        selector = self._selector
        while True:
            with self._lock:
                timeout = None
                if self._waiting:
                    due = min(flow.delayed[0][0] for flow in self._waiting)
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
                    if mask & _WRITE and not link.closed:
                        link.flush(wflow)
                    if mask & _READ and not link.closed:
                        link.read(rflow)
                if self._waiting:
                    self._deliver_delayed()

    def _deliver_delayed(self) -> None:
        now = time.monotonic()
        for flow in list(self._waiting):
            link = flow.link
            while flow.delayed and flow.delayed[0][0] <= now and not link.closed:
                link.write(flow, flow.delayed.popleft()[1])
            if not flow.delayed:
                self._waiting.discard(flow)
                if link.ending and not link.closed:
                    link.end()

    def _drain(self) -> None:
        """Empty the wake-up socket (only ``tearDown()`` writes to it)."""
        try:
            self._wake_r.recv(64)
        except OSError:
            pass

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:  # the client gave up already
            return
        self.accepted += 1
        try:
            server = self._connect()
        except OSError:  # the server is down: so is this connection
            _shutdown(client, socket.SHUT_RDWR)
            client.close()
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setblocking(False)
        self._links.add(_Link(self, client, server))

    def _connect(self) -> socket.socket:
        host, port = self.target_host, self.target_port
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
