"""The forwarding of one connection through ``PortForwardTestSetup``.

A ``Link`` joins a client's socket to the server's, with a ``_Flow`` each
way, and applies the faults in force to the bytes as they pass.  All it
knows of the proxy is a ``Switchboard``: the selector, the live links and
delayed flows, and the faults.  To cut a
connection at the moment of a ``COMMIT``, it follows the PostgreSQL
messages the client sends, and while the trap is swallowing replies, those
the server sends.  Everything here runs under the proxy's lock, in the
proxy's selector loop or in a fault method.
"""

from __future__ import annotations

import collections
import selectors
import socket
import struct
import time
from collections.abc import Callable

__all__ = ["READ", "WRITE", "Link", "Switchboard", "shutdown"]

_CHUNK = 65536
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, timeout 0: close() sends RST
_INT32 = struct.Struct("!i")
_STARTUP = struct.Struct("!ii")  # length, then protocol version or request code
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104
_QUERY, _READY = ord("Q"), ord("Z")
_ANSWERED = frozenset(b"QSF")  # Query, Sync, FunctionCall: one ReadyForQuery each


def shutdown(sock: socket.socket, how: int) -> None:
    try:
        sock.shutdown(how)
    except OSError:  # the peer may be gone already
        pass


def _is_commit(sql: bytes) -> bool:
    return sql.lstrip().upper().startswith((b"COMMIT", b"END"))


class Switchboard:
    """What the links of one proxy share, and the faults in force.

    The proxy sets the faults; the links read them, register their sockets
    with ``selector``, and keep ``links`` and ``waiting`` up to date.
    """

    def __init__(self) -> None:
        self.selector: selectors.BaseSelector | None = None  # while listening
        self.links: set[Link] = set()
        self.waiting: set[_Flow] = set()  # flows with delayed chunks
        self.blackhole = False
        self.latency = 0.0
        self.cut_after: int | None = None  # for links made from now on
        self.commit_trap: bool | None = None  # armed: whether to deliver
        self.on_commit_cut: Callable[[], None] | None = None
        self.commit_cuts = 0

    def claim_commit(self) -> bool | None:
        """Disarm the commit trap; whether to deliver, or None if unarmed."""
        deliver, self.commit_trap = self.commit_trap, None
        if deliver is not None:
            self.commit_cuts += 1
            if self.on_commit_cut is not None:
                self.on_commit_cut()
        return deliver


class _Flow:
    """The bytes going one way, and those waiting to be sent."""

    def __init__(self, link: Link, src: socket.socket, dst: socket.socket) -> None:
        self.link, self.src, self.dst = link, src, dst
        self.out = bytearray()  # not yet accepted by ``dst``
        self.delayed: collections.deque[tuple[float, bytes]] = collections.deque()

    def idle(self) -> bool:
        return not self.out and not self.delayed


class Link:
    """One forwarded connection.  Every method runs under the proxy's lock."""

    def __init__(
        self, board: Switchboard, client: socket.socket, server: socket.socket
    ) -> None:
        self.board, self.client, self.server = board, client, server
        self.up, self.down = _Flow(self, client, server), _Flow(self, server, client)
        self.closed = self.ending = False
        self.sent = 0  # bytes forwarded to the client
        self.cut_at = board.cut_after  # value of ``sent`` at which to cut
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
            reads = 0 if self.ending or rflow.out else READ
            writes = WRITE if wflow.out else 0
            self._want(sock, reads | writes, (self, rflow, wflow))

    def _want(self, sock: socket.socket, mask: int, data: tuple) -> None:
        old, selector = self._masks[sock], self.board.selector
        if mask != old and selector is not None:
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
            shutdown(self.client, socket.SHUT_RDWR)
        shutdown(self.server, socket.SHUT_RDWR)
        self.client.close()
        self.server.close()
        self.board.links.discard(self)
        self.board.waiting.difference_update((self.up, self.down))

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
        board = self.board
        if flow is self.up:
            if board.blackhole or self.swallow:
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
            if board.blackhole:
                return
            if self.cut_at is not None and self.cut_at - self.sent <= len(data):
                data = data[: max(self.cut_at - self.sent, 0)]
                self.ending = True
            self.sent += len(data)
        if data and (board.latency or flow.delayed):
            # Bytes behind held-back ones wait for them, even once latency
            # is off: a stream keeps its order.
            due = time.monotonic() + board.latency
            if flow.delayed:
                due = max(due, flow.delayed[-1][0])
            flow.delayed.append((due, data))
            board.waiting.add(flow)
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
        armed = self.board.commit_trap is not None
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
                        deliver = self.board.claim_commit()
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
