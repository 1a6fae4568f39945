"""The fault-injecting proxy, against a real PostgreSQL server (no mocks)."""

import base64
import hashlib
import hmac
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import threading
import time

import psycopg2
import pytest
from helpers import child_env, firewall_rules

from reconnecting.testing._watchdog import start_watchdog
from reconnecting.testing.portforward import PortForwardTestSetup
from reconnecting.testing.waiting import wait_until

CLOSED = "server closed the connection unexpectedly"


def proxy_threads():
    return [t for t in threading.enumerate() if t.name.startswith("portforward")]


@pytest.fixture(scope="module")
def pg(pg):
    """The module's test database, with a table and a sequence."""
    with pg.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")
        cur.execute("CREATE SEQUENCE s")
    conn.close()
    return pg


@pytest.fixture
def proxy(pg):
    pf = PortForwardTestSetup(pg.host, pg.port)
    pf.setUp()
    yield pf
    pf.tearDown()
    assert not proxy_threads()


@pytest.fixture
def connect(pg, proxy):
    """Connect through the proxy; close what is left at the end."""
    conns = []

    def connect(**kwargs):
        kwargs.setdefault("connect_timeout", 10)
        conns.append(
            psycopg2.connect(
                host=proxy.host,
                port=proxy.port,
                user=pg.user,
                dbname=pg.dbname,
                password=pg.password,
                **kwargs,
            )
        )
        return conns[-1]

    yield connect
    for conn in conns:
        conn.close()


def select_1(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        return cur.fetchone()[0]


def assert_closed(conn, sql="SELECT 1"):
    with pytest.raises(psycopg2.OperationalError) as info:
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.fetchall()
    assert str(info.value).startswith(CLOSED)
    assert conn.closed


# Raw frontend protocol, to control exactly what goes over the wire.


def message(kind, body):
    return kind + struct.pack("!i", len(body) + 4) + body


def query(sql):
    return message(b"Q", sql.encode() + b"\0")


def read_until_ready(sock):
    """Read backend messages up to ReadyForQuery; return their type bytes."""
    kinds, buf = [], b""
    while True:
        while len(buf) >= 5 and len(buf) >= 1 + struct.unpack_from("!i", buf, 1)[0]:
            kinds.append(buf[:1])
            if buf[:1] == b"E":
                raise AssertionError(buf)
            if buf[:1] == b"Z":
                return kinds
            buf = buf[1 + struct.unpack_from("!i", buf, 1)[0] :]
        data = sock.recv(65536)
        if not data:
            raise EOFError(kinds)
        buf += data


def raw_session(pg, proxy):
    """A raw socket through the proxy, logged in, no TLS negotiation."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    params = f"user\0{pg.user}\0database\0{pg.dbname}\0\0".encode()
    body = struct.pack("!i", 196608) + params
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    if pg.password:
        scram_login(sock, pg.password)
    read_until_ready(sock)
    return sock


def read_message(sock):
    """One backend message: its type and body."""
    header = b""
    while len(header) < 5:
        header += sock.recv(5 - len(header))
    length = struct.unpack("!i", header[1:])[0] - 4
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return header[:1], body


def scram_login(sock, password):
    """Answer the server's SCRAM-SHA-256 request (RFC 5802, RFC 7677)."""
    kind, body = read_message(sock)
    assert kind == b"R" and b"SCRAM-SHA-256" in body, (kind, body)
    nonce = base64.b64encode(os.urandom(18))
    first_bare = b"n=,r=" + nonce
    first = b"n,," + first_bare
    mechanism = b"SCRAM-SHA-256\0" + struct.pack("!i", len(first)) + first
    sock.sendall(b"p" + struct.pack("!i", len(mechanism) + 4) + mechanism)
    kind, body = read_message(sock)
    server_first = body[4:]
    fields = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(fields[b"s"]), int(fields[b"i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    final_bare = b"c=biws,r=" + fields[b"r"]
    message = first_bare + b"," + server_first + b"," + final_bare
    signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = final_bare + b",p=" + base64.b64encode(proof)
    sock.sendall(b"p" + struct.pack("!i", len(final) + 4) + final)
    kind, body = read_message(sock)  # the server's signature
    assert kind == b"R", body


def test_forwards(pg, proxy, connect):
    assert proxy.port != 0 and proxy.host == "127.0.0.1"
    conn = connect()
    assert select_1(conn) == 1
    assert (proxy.accepted, proxy.connections) == (1, 1)
    assert repr(proxy) == (
        f"<PortForwardTestSetup 127.0.0.1:{proxy.port} -> {pg.host}:{pg.port}"
        " listening, 1 connections>"
    )
    conn.close()
    wait_until(lambda: proxy.connections == 0)


def test_binds_only_to_loopback():
    for host in ("0.0.0.0", "192.0.2.1", "::", "example.com", ""):
        with pytest.raises(ValueError, match="loopback"):
            PortForwardTestSetup("127.0.0.1", 5432, host=host)
    for host in ("localhost", "127.0.0.2", "::1"):
        assert PortForwardTestSetup("127.0.0.1", 5432, host=host).host == host


def test_set_up_twice_keeps_listening(proxy, connect):
    conn = connect()
    port, thread = proxy.port, proxy._thread
    proxy.setUp()
    assert (proxy.port, proxy._thread) == (port, thread)
    assert select_1(conn) == 1 and proxy.connections == 1


def test_tear_down_keeps_the_port_and_breaks_connections(pg, proxy, connect):
    conn = connect()
    assert select_1(conn) == 1
    port = proxy.port
    proxy.tearDown()
    proxy.tearDown()  # idempotent
    assert "stopped" in repr(proxy) and not proxy_threads()
    assert_closed(conn)
    with pytest.raises(psycopg2.OperationalError, match="Connection refused"):
        connect()
    proxy.setUp()
    assert proxy.port == port
    assert select_1(connect()) == 1


def test_drop_closes_connections_and_keeps_listening(proxy, connect):
    conns = [connect(), connect()]
    proxy.drop()
    assert proxy.connections == 0
    for conn in conns:
        assert_closed(conn)
    assert select_1(connect()) == 1


def test_reset_sends_rst_to_the_client(pg, proxy, connect):
    conn = connect()
    raw, fin = raw_session(pg, proxy), raw_session(pg, proxy)
    proxy.reset()
    assert proxy.connections == 0
    # libpq reports ECONNRESET with the same words as an orderly close.
    assert_closed(conn)
    with pytest.raises(ConnectionResetError):
        raw.recv(1)
    raw.close()
    # A drop, by contrast, is an orderly close: end of file.
    fin.close()
    fin = raw_session(pg, proxy)
    proxy.drop()
    assert fin.recv(1) == b""
    fin.close()
    assert select_1(connect()) == 1


def test_blackhole_stops_traffic_until_dropped(proxy, connect, direct):
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    proxy.blackhole()
    outcome = []
    done = threading.Event()

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 'lost'")
        except psycopg2.Error as exc:
            outcome.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=run)
    worker.start()
    assert not done.wait(0.5)  # no reply comes...
    direct.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
    assert direct.fetchone()[0] == "SELECT pg_backend_pid()"  # ...nor went
    # New connections are blackholed as well: the client's timeout fires.
    with pytest.raises(psycopg2.OperationalError, match="timeout expired"):
        connect(connect_timeout=2)
    wait_until(lambda: proxy.connections == 1)  # the client gave up
    proxy.drop()
    assert done.wait(10)
    worker.join()
    assert str(outcome[0]).startswith(CLOSED)
    proxy.restore()
    assert select_1(connect()) == 1


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT repeat('x', 1000000)",
        "SELECT g, 'some text' FROM generate_series(1, 200000) g",
    ],
)
def test_cut_after_breaks_a_large_result(proxy, connect, sql):
    conn = connect()
    assert select_1(conn) == 1
    proxy.cut_after(100_000)
    assert "cut_after=100000" in repr(proxy)
    assert_closed(conn, sql)
    wait_until(lambda: proxy.connections == 0)
    # New connections are cut too, once they have had their share.
    late = connect()
    assert_closed(late, sql)
    proxy.restore()
    with connect().cursor() as cur:
        cur.execute(sql)
        assert len(cur.fetchall()) in (1, 200000)


@pytest.fixture
def source():
    """A TCP server that sends 1000 bytes, waits for one byte, then sends more."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    peers = []

    def serve():
        try:
            peer, _ = listener.accept()
        except OSError:
            return
        peers.append(peer)
        peer.settimeout(10)
        try:
            peer.sendall(b"a" * 1000)
            if peer.recv(1):
                peer.sendall(b"b" * 100_000)
            peer.recv(1)  # until the proxy closes
        except OSError:
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(15)
    for peer in peers:
        peer.close()


def read_to_eof(sock):
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("when", ["before", "during"])
def test_cut_after_forwards_exactly_n_bytes(source, when):
    with PortForwardTestSetup("127.0.0.1", source) as pf:
        if when == "before":
            pf.cut_after(1234)  # counts from the start of new connections
        client = socket.create_connection((pf.host, pf.port), timeout=10)
        if when == "during":
            received = b""
            while len(received) < 1000:
                received += client.recv(1000)
            pf.cut_after(1234)  # counts from now on
        client.sendall(b"!")
        data = read_to_eof(client)
        client.close()
    assert len(data) == 1234 if when == "before" else data == b"b" * 1234


def test_latency_slows_round_trips(proxy, connect):
    conn = connect()

    def round_trip():
        started = time.perf_counter()
        select_1(conn)
        return time.perf_counter() - started

    plain = statistics.median(round_trip() for _ in range(20))
    proxy.latency(0.05)
    slow = statistics.median(round_trip() for _ in range(3))
    proxy.restore()
    assert slow > 10 * plain  # each way: 2 x 50 ms against well under 10 ms
    with pytest.raises(ValueError):
        proxy.latency(-1)


@pytest.fixture
def sink():
    """A TCP server that reads what one client sends, to the end."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    received = []

    def serve():
        try:
            peer, _ = listener.accept()
        except OSError:
            return
        with peer:
            peer.settimeout(10)
            received.append(read_to_eof(peer))

    thread = threading.Thread(target=serve)
    thread.start()
    yield listener.getsockname()[1], received
    listener.close()
    thread.join(15)


def test_latency_keeps_the_order_of_bytes_after_restore(sink):
    # A client's bytes sent after restore() must not overtake those still
    # held back: a Terminate would otherwise reach the server before a COMMIT.
    port, received = sink
    with PortForwardTestSetup("127.0.0.1", port) as pf:
        client = socket.create_connection((pf.host, pf.port), timeout=10)
        pf.latency(0.5)
        client.sendall(b"first,")
        wait_until(lambda: pf.delayed_bytes == 6)
        pf.restore()
        client.sendall(b"second")
        client.close()
        wait_until(lambda: received)
    assert received == [b"first,second"]


def last_value(direct):
    direct.execute("SELECT last_value FROM s")
    return direct.fetchone()[0]


def rows(direct, value):
    direct.execute("SELECT count(*) FROM t WHERE x = %s", (value,))
    return direct.fetchone()[0]


def test_cut_on_commit_delivered_commits_but_breaks(proxy, connect, direct):
    conn = connect()
    proxy.cut_on_commit()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(psycopg2.OperationalError) as info:
        conn.commit()
    assert str(info.value).startswith(CLOSED)
    assert rows(direct, 1) == 1  # committed all the same
    assert proxy.commit_cuts == 1
    # The trap fired once; the next commit goes through.
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    assert rows(direct, 1) == 2


def test_cut_on_commit_undelivered_rolls_back(proxy, connect, direct):
    conn = connect()
    proxy.cut_on_commit(deliver=False)
    assert "cut_on_commit(deliver=False)" in repr(proxy)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (2)")
    with pytest.raises(psycopg2.OperationalError) as info:
        conn.commit()
    assert str(info.value).startswith(CLOSED)
    assert rows(direct, 2) == 0
    assert proxy.commit_cuts == 1


def test_restore_disarms_the_commit_trap(proxy, connect, direct):
    proxy.cut_on_commit()
    proxy.restore()
    conn = connect()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (3)")
    conn.commit()
    assert rows(direct, 3) == 1 and proxy.commit_cuts == 0


@pytest.mark.parametrize("deliver", [True, False])
def test_cut_on_commit_sent_with_other_messages(pg, proxy, direct, deliver):
    """The messages before the COMMIT in the same chunk still reach the server."""
    direct.execute("SELECT nextval('s')")
    before = last_value(direct)
    sock = raw_session(pg, proxy)
    sock.sendall(query("BEGIN"))
    read_until_ready(sock)
    proxy.cut_on_commit(deliver)
    value = 10 + deliver
    sock.sendall(
        query(f"INSERT INTO t VALUES ({value})")
        + query("SELECT nextval('s')")
        + query("  end ")
    )
    assert read_to_eof(sock) == b""  # not even the INSERT's reply
    sock.close()
    assert proxy.commit_cuts == 1
    # Outside the transaction, the sequence shows what the server ran.
    wait_until(lambda: last_value(direct) == before + 1)
    assert rows(direct, value) == deliver


@pytest.mark.parametrize("deliver", [True, False])
def test_cut_on_commit_split_across_chunks(pg, proxy, connect, direct, deliver):
    sock = raw_session(pg, proxy)
    other = connect()
    for sql in ("BEGIN", f"INSERT INTO t VALUES ({20 + deliver})"):
        sock.sendall(query(sql))
        read_until_ready(sock)
    proxy.cut_on_commit(deliver)
    commit = query("COMMIT")
    for piece in (commit[:2], commit[2:7], commit[7:]):
        sock.sendall(piece)
        # A round trip through the same proxy loop: it has read the piece.
        assert select_1(other) == 1
    assert read_to_eof(sock) == b""
    sock.close()
    assert rows(direct, 20 + deliver) == deliver
    assert proxy.commit_cuts == 1
    wait_until(lambda: proxy.connections == 1)


def test_lazy_target_context_manager_and_unix_socket(pg):
    with PortForwardTestSetup() as pf:  # the current test database's server
        assert (pf.target_host, pf.target_port) == (pg.host, pg.port)
        conn = psycopg2.connect(
            host=pf.host,
            port=pf.port,
            user=pg.user,
            dbname=pg.dbname,
            password=pg.password,
        )
        assert select_1(conn) == 1
    assert_closed(conn)
    conn.close()
    assert not proxy_threads()
    socket_dir = getattr(pg.server, "socket_dir", None)
    if socket_dir is None:
        pytest.skip("the test server has no socket directory of ours")
    with PortForwardTestSetup(socket_dir, pg.port) as pf:
        conn = psycopg2.connect(
            host=pf.host,
            port=pf.port,
            user=pg.user,
            dbname=pg.dbname,
            password=pg.password,
        )
        assert select_1(conn) == 1
        conn.close()


def test_server_down_closes_new_connections(pg):
    unused = socket.create_server(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()
    with PortForwardTestSetup("127.0.0.1", port) as pf:
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(host=pf.host, port=pf.port, connect_timeout=10)
        assert pf.accepted == 1 and pf.connections == 0


def blocked_query(conn):
    with pytest.raises(psycopg2.OperationalError):
        select_1(conn)


def test_leaves_no_thread_or_file_descriptor(pg):
    # The front door process, one for all proxies, stays: its one socket too.
    with PortForwardTestSetup(pg.host, pg.port):
        pass
    fds = len(os.listdir("/proc/self/fd"))
    pf = PortForwardTestSetup(pg.host, pg.port)
    conns = []
    for _ in range(2):
        pf.setUp()

        def connect():
            conns.append(
                psycopg2.connect(
                    host=pf.host,
                    port=pf.port,
                    user=pg.user,
                    dbname=pg.dbname,
                    password=pg.password,
                )
            )
            return conns[-1]

        select_1(connect())
        pf.drop()
        select_1(connect())
        pf.reset()
        select_1(connect())
        pf.latency(0.001)
        select_1(connect())
        pf.blackhole()
        worker = threading.Thread(target=blocked_query, args=(conns[-1],))
        worker.start()
        assert len(proxy_threads()) == 1
        pf.tearDown()
        worker.join(10)
        assert not proxy_threads()
    for conn in conns:
        conn.close()
    assert len(os.listdir("/proc/self/fd")) == fds


# -- the watchdog that undoes a partition() ----------------------------------


@pytest.mark.parametrize("cleaned_up", [False, True])
def test_the_watchdog_undoes_unless_told_it_is_done(tmp_path, cleaned_up):
    undone = tmp_path / "undone"
    command = [sys.executable, "-c", f"open({str(undone)!r}, 'w').close()"]
    watchdog, pipe = start_watchdog(None, undo=[command])
    if cleaned_up:
        os.write(pipe, b"done\n")
    os.close(pipe)  # as when the test process dies, if not done
    assert watchdog.wait() == 0
    assert undone.exists() is not cleaned_up


CANNOT_PARTITION = PortForwardTestSetup.partition_unavailable()
needs_partition = pytest.mark.skipif(
    CANNOT_PARTITION is not None, reason=f"cannot partition: {CANNOT_PARTITION}"
)


@needs_partition
def test_heal_removes_the_rules_and_ends_the_watchdog(proxy):
    proxy.partition()
    watchdog, _ = proxy._partition._watchdog
    assert len(firewall_rules(proxy.port)) == 2
    proxy.heal()
    assert firewall_rules(proxy.port) == []
    assert watchdog.returncode == 0  # ended and reaped by heal()


@needs_partition
def test_a_killed_process_leaves_no_rule_behind():
    # Its proxy forwards to a port nobody listens on: no connection is made.
    script = """
        import threading
        from reconnecting.testing import PortForwardTestSetup
        proxy = PortForwardTestSetup("127.0.0.1", 9)
        proxy.setUp()
        proxy.partition()
        print(proxy.port, flush=True)
        threading.Event().wait(300)
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(child.stdout.readline())
        assert len(firewall_rules(port)) == 2
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    wait_until(lambda: not firewall_rules(port))
    assert firewall_rules(port) == []


# -- cancel() through the proxy -----------------------------------------------------

CANCEL = """
    import importlib, sys, threading, time
    from reconnecting.testing import PgTestSetup, PortForwardTestSetup
    driver = importlib.import_module(sys.argv[1])
    pg = PgTestSetup()
    pg.setUp()
    with PortForwardTestSetup() as proxy:
        conn = driver.connect(pg.dsn, host=proxy.host, port=proxy.port)
        errors = []

        def sleep():
            try:
                conn.cursor().execute("SELECT pg_sleep(60)")
            except driver.Error as exc:
                errors.append(type(exc).__name__)

        worker = threading.Thread(target=sleep)
        worker.start()
        check = driver.connect(pg.dsn)
        check.autocommit = True
        while True:  # until the query runs on the server
            cursor = check.cursor()
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE query LIKE 'SELECT pg_sleep(60)%' AND state = 'active'")
            if cursor.fetchone()[0]:
                break
        conn.cancel()  # blocking: it used to hang the whole process here
        worker.join()
        print(errors, proxy.accepted)
    pg.tearDown()
"""


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_blocking_cancel_goes_through(driver, tmp_path):
    # In a process of its own: a deadlock there is a failure here, not a hang.
    script = tmp_path / "cancel.py"
    script.write_text(textwrap.dedent(CANCEL))
    try:
        result = subprocess.run(
            [sys.executable, str(script), driver],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{driver}'s cancel() through the proxy deadlocked")
    assert result.stdout == "['QueryCanceled'] 1\n", result.stderr
