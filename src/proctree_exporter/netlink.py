"""The Linux proc connector: subscribe, receive, and parse process events.

Layout of one message (all host byte order)::

    nlmsghdr   len u32, type u16, flags u16, seq u32, pid u32          16 bytes
    cn_msg     id.idx u32, id.val u32, seq u32, ack u32, len u16, flags u16  20
    proc_event what u32, cpu u32, timestamp_ns u64                      16
               event_data (union, what-specific)                    <= 24

Parsing is pure and is driven by ``cn_msg.len``, so the shorter unions of older
kernels (an EXIT without parent fields) still parse. It comes in two shapes:
:func:`parse_records` gives each event as a plain tuple, ``(what, cpu, seq,
ts_ns, *fields)`` with the fields in the order of the typed event, which is what
the collector's hot path consumes (a tuple costs a fifth of a frozen dataclass,
measured in bench/event_cost.py); :func:`parse_datagram` gives the same events
as frozen dataclasses, for everything that is not counted in microseconds.
:class:`ConnectorSocket` is the thin layer that touches the kernel.

The kernel sends each event as its own datagram, so a plain recv costs one
system call per event (about 1.5 to 2.7 us in Python, bench/event_cost.py).
:class:`_MultiRecv` takes up to :data:`RECV_BATCH` datagrams per call with
recvmmsg(2), through ctypes because Python's socket module has no recvmmsg and
no well-kept library offers it. Where libc lacks it, or with ``batch=False``,
the socket falls back to one recvfrom per datagram; the tests run both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import IntFlag
from typing import ClassVar

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)

# Each queued event costs this much receive buffer (measured: skb truesize).
BYTES_PER_QUEUED_EVENT = 832
MAX_DATAGRAM = 65536
# recvmmsg: datagrams per call, and the room for each. The connector's own
# datagrams are 76 bytes; a longer one is reported at its full length
# (MSG_TRUNC) and rejected as oversized, as the single recv does past 64 KiB.
RECV_BATCH = 64
RECV_SLOT = 1024


class What(IntFlag):
    """proc_event.what: the event type, one bit each (filter masks OR them)."""

    NONE = 0x0
    FORK = 0x1
    EXEC = 0x2
    UID = 0x4
    GID = 0x40
    SID = 0x80
    PTRACE = 0x100
    COMM = 0x200
    NONZERO_EXIT = 0x20000000  # filter-only flag
    COREDUMP = 0x40000000
    EXIT = 0x80000000


# The events the tree consumes; the kernel filter passes only these.
CONSUMED = What.FORK | What.EXEC | What.UID | What.COMM | What.EXIT

_NL = struct.Struct("=IHHII")
_HEAD = struct.Struct("=IHHII IIIIHH IIQ")  # nlmsghdr + cn_msg + proc_event header
_HEAD_LEN = _HEAD.size  # 52
# What the kernel sends for every event: the header and the whole 24-byte union
# (cn_msg.len is sizeof(struct proc_event) whatever the event), read in one go
_FULL = struct.Struct("=IHHII IIIIHH IIQ IIIIII")
_FULL_LEN = _FULL.size  # 76
_UNION = _FULL_LEN - _HEAD_LEN
_CN_OFF = _NL.size  # 16
_EVENT_HDR = 16  # what, cpu, timestamp_ns
_U32 = struct.Struct("=I")
_2U32 = struct.Struct("=II")
_4U32 = struct.Struct("=IIII")
_6U32 = struct.Struct("=IIIIII")
_COMM = struct.Struct("=II16s")


# --- events -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Fields every proc event carries. ``ts_ns`` is CLOCK_MONOTONIC."""

    what: ClassVar[int] = -1  # the proc_event.what of this type

    cpu: int
    seq: int
    ts_ns: int

    def record(self) -> tuple:
        """This event as :func:`parse_records` gives it: (what, cpu, seq, ts_ns, *fields)."""
        return (self.what, *(getattr(self, f.name) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class AckEvent(Event):
    """The kernel's answer to LISTEN/IGNORE; ``err`` is 0 on success."""

    what: ClassVar[int] = int(What.NONE)

    err: int


@dataclass(frozen=True, slots=True)
class ForkEvent(Event):
    """A new task. ``child_pid != child_tgid`` means a thread, not a process."""

    what: ClassVar[int] = int(What.FORK)

    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int

    @property
    def is_thread(self) -> bool:
        return self.child_pid != self.child_tgid


@dataclass(frozen=True, slots=True)
class ExecEvent(Event):
    """A successful execve: argv, exe and comm must be read from /proc."""

    what: ClassVar[int] = int(What.EXEC)

    pid: int
    tgid: int


@dataclass(frozen=True, slots=True)
class UidEvent(Event):
    """Real or effective uid changed."""

    what: ClassVar[int] = int(What.UID)

    pid: int
    tgid: int
    ruid: int
    euid: int


@dataclass(frozen=True, slots=True)
class GidEvent(Event):
    """Real or effective gid changed."""

    what: ClassVar[int] = int(What.GID)

    pid: int
    tgid: int
    rgid: int
    egid: int


@dataclass(frozen=True, slots=True)
class SidEvent(Event):
    """setsid(): the process leads a new session."""

    what: ClassVar[int] = int(What.SID)

    pid: int
    tgid: int


@dataclass(frozen=True, slots=True)
class PtraceEvent(Event):
    """Attach (tracer set) or detach (tracer 0)."""

    what: ClassVar[int] = int(What.PTRACE)

    pid: int
    tgid: int
    tracer_pid: int
    tracer_tgid: int


@dataclass(frozen=True, slots=True)
class CommEvent(Event):
    """The task renamed itself (prctl PR_SET_NAME or /proc/PID/comm)."""

    what: ClassVar[int] = int(What.COMM)

    pid: int
    tgid: int
    comm: str


@dataclass(frozen=True, slots=True)
class CoredumpEvent(Event):
    """A core dump started. Parent fields are 0 on kernels that lack them."""

    what: ClassVar[int] = int(What.COREDUMP)

    pid: int
    tgid: int
    parent_pid: int
    parent_tgid: int


@dataclass(frozen=True, slots=True)
class ExitEvent(Event):
    """A task exited. ``exit_code`` is a raw wait status; parent fields may be 0."""

    what: ClassVar[int] = int(What.EXIT)

    pid: int
    tgid: int
    exit_code: int
    exit_signal: int
    parent_pid: int
    parent_tgid: int

    @property
    def is_thread(self) -> bool:
        return self.pid != self.tgid


_ALL_EVENTS = (AckEvent, ForkEvent, ExecEvent, UidEvent, GidEvent, SidEvent, PtraceEvent,
               CommEvent, CoredumpEvent, ExitEvent)


def decode_wait_status(status: int) -> tuple[int | None, int | None, bool]:
    """A raw wait status as (exit code, terminating signal, core dumped)."""
    if status & 0x7F == 0:
        return (status >> 8) & 0xFF, None, False
    return None, status & 0x7F, bool(status & 0x80)


# --- parsing ----------------------------------------------------------------


class ParseError(ValueError):
    """A datagram that is not a well-formed proc connector message from the kernel.

    ``reason`` is a short stable word for counting: truncated, oversized,
    bad_type, wrong_family, bad_length, spoofed, unknown_event.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _fields(what: int, data: bytes | bytearray | memoryview, off: int, dlen: int) -> tuple:
    """The fields of one proc_event union member, in the typed event's order;
    ``dlen`` is the bytes the message carries for it."""
    if what == What.FORK:
        if dlen < 16:
            raise ParseError("bad_length", f"FORK needs 16 bytes of data, has {dlen}")
        return _4U32.unpack_from(data, off)
    if what == What.EXIT:
        if dlen >= 24:
            return _6U32.unpack_from(data, off)
        if dlen >= 16:  # kernels before the parent fields were added
            return (*_4U32.unpack_from(data, off), 0, 0)
        raise ParseError("bad_length", f"EXIT needs 16 bytes of data, has {dlen}")
    if what == What.EXEC:
        if dlen < 8:
            raise ParseError("bad_length", f"EXEC needs 8 bytes of data, has {dlen}")
        return _2U32.unpack_from(data, off)
    if what == What.COMM:
        if dlen < 24:
            raise ParseError("bad_length", f"COMM needs 24 bytes of data, has {dlen}")
        pid, tgid, raw = _COMM.unpack_from(data, off)
        return pid, tgid, raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    if what in (What.UID, What.GID, What.PTRACE):
        if dlen < 16:
            raise ParseError("bad_length", f"{What(what).name} needs 16 bytes of data, has {dlen}")
        return _4U32.unpack_from(data, off)
    if what == What.SID:
        if dlen < 8:
            raise ParseError("bad_length", f"SID needs 8 bytes of data, has {dlen}")
        return _2U32.unpack_from(data, off)
    if what == What.COREDUMP:
        if dlen >= 16:
            return _4U32.unpack_from(data, off)
        if dlen >= 8:
            return (*_2U32.unpack_from(data, off), 0, 0)
        raise ParseError("bad_length", f"COREDUMP needs 8 bytes of data, has {dlen}")
    if what == What.NONE:
        if dlen < 4:
            raise ParseError("bad_length", f"ACK needs 4 bytes of data, has {dlen}")
        return _U32.unpack_from(data, off)
    raise ParseError("unknown_event", f"what=0x{what:x}")


_FORK, _EXIT, _EXEC = int(What.FORK), int(What.EXIT), int(What.EXEC)


def parse_records(data: bytes | bytearray | memoryview, nbytes: int | None = None,
                  sender_port: int = 0) -> list[tuple]:
    """Parse one received datagram into event records: ``(what, cpu, seq, ts_ns,
    *fields)``, the fields in the order of the typed event (:func:`event_of`).

    ``nbytes`` is what recv reported (it may exceed ``len(data)`` when the
    datagram did not fit: that is ``oversized``). ``sender_port`` is the
    netlink port id from the source address: anything but 0 (the kernel) is
    ``spoofed``. Raises :class:`ParseError`; the whole datagram is dropped.
    """
    size = len(data) if nbytes is None else nbytes
    if size > len(data):
        raise ParseError("oversized", f"datagram of {size} bytes exceeds buffer of {len(data)}")
    if sender_port != 0:
        raise ParseError("spoofed", f"sender port id {sender_port} is not the kernel")
    if size == 0:
        raise ParseError("truncated", "empty datagram")
    records: list[tuple] = []
    off = 0
    while off < size:
        left = size - off
        if left < _HEAD_LEN:
            nl_type = _NL.unpack_from(data, off)[1] if left >= _NL.size else None
            if nl_type in (NLMSG_NOOP, NLMSG_ERROR):
                raise ParseError("bad_type", f"netlink control message type {nl_type}")
            raise ParseError("truncated", f"{left} bytes left, a message needs {_HEAD_LEN}")
        if left >= _FULL_LEN:
            (nl_len, nl_type, _nl_flags, _nl_seq, _nl_pid, idx, val, seq, _ack, cn_len,
             _cn_flags, what, cpu, ts, u0, u1, u2, u3, u4, u5) = _FULL.unpack_from(data, off)
        else:
            (nl_len, nl_type, _nl_flags, _nl_seq, _nl_pid, idx, val, seq, _ack, cn_len,
             _cn_flags, what, cpu, ts) = _HEAD.unpack_from(data, off)
        if nl_len < _HEAD_LEN or nl_len > left:
            raise ParseError("truncated", f"nlmsg_len {nl_len} with {left} bytes left")
        if nl_type != NLMSG_DONE:
            raise ParseError("bad_type", f"netlink message type {nl_type}")
        if idx != CN_IDX_PROC or val != CN_VAL_PROC:
            raise ParseError("wrong_family", f"connector id {idx}:{val}")
        if cn_len < _EVENT_HDR or _CN_OFF + 20 + cn_len > nl_len:
            raise ParseError("bad_length", f"cn_msg.len {cn_len} in nlmsg of {nl_len}")
        dlen = cn_len - _EVENT_HDR
        # the kernel's own shape (the whole union, already read) for the busy three
        if dlen < _UNION:
            records.append((what, cpu, seq, ts, *_fields(what, data, off + _HEAD_LEN, dlen)))
        elif what == _FORK:
            records.append((what, cpu, seq, ts, u0, u1, u2, u3))
        elif what == _EXIT:
            records.append((what, cpu, seq, ts, u0, u1, u2, u3, u4, u5))
        elif what == _EXEC:
            records.append((what, cpu, seq, ts, u0, u1))
        else:
            records.append((what, cpu, seq, ts, *_fields(what, data, off + _HEAD_LEN, dlen)))
        off += (nl_len + 3) & ~3
    return records


_EVENT_TYPES: dict[int, type[Event]] = {cls.what: cls for cls in _ALL_EVENTS}


def event_of(record: tuple) -> Event:
    """The typed event of a record from :func:`parse_records`."""
    return _EVENT_TYPES[record[0]](*record[1:])


def parse_datagram(data: bytes | bytearray | memoryview, nbytes: int | None = None,
                   sender_port: int = 0) -> list[Event]:
    """Parse one received datagram into typed events (see :func:`parse_records`)."""
    return [_EVENT_TYPES[r[0]](*r[1:]) for r in parse_records(data, nbytes, sender_port)]


# --- building messages (what we send, and what tests feed the parser) -------


def build_message(payload: bytes, *, seq: int = 0, ack: int = 0, port: int = 0,
                  nl_type: int = NLMSG_DONE, idx: int = CN_IDX_PROC,
                  val: int = CN_VAL_PROC) -> bytes:
    """A netlink + connector message around ``payload``."""
    cn = struct.pack("=IIIIHH", idx, val, seq, ack, len(payload), 0) + payload
    return struct.pack("=IHHII", _NL.size + len(cn), nl_type, 0, seq, port) + cn


def build_event(what: int, data: bytes, *, cpu: int = 0, seq: int = 0, ts_ns: int = 0) -> bytes:
    """A kernel-shaped proc_event message (for tests and fuzzing)."""
    return build_message(struct.pack("=IIQ", what, cpu, ts_ns) + data, seq=seq)


# --- the socket ---------------------------------------------------------------


class ConnectorUnavailable(OSError):
    """The proc connector cannot be used here; the message says why."""


class Overrun(Exception):
    """The kernel dropped events for this socket (recv reported ENOBUFS)."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """What subscribing negotiated."""

    filtered: bool  # the kernel event filter was requested (kernel >= 6.6)
    rcvbuf_bytes: int  # receive buffer the kernel granted (as getsockopt reports it)
    rcvbuf_forced: bool  # SO_RCVBUFFORCE was permitted


def kernel_supports_filter(release: str | None = None) -> bool:
    """True on kernels >= 6.6, which honour the 8-byte ``proc_input`` LISTEN."""
    release = release or os.uname().release
    try:
        major, minor = (int(p) for p in release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (6, 6)


def set_receive_buffer(sock: socket.socket, size: int) -> bool:
    """Ask for a ``size``-byte receive buffer; True if forced (CAP_NET_ADMIN), False if
    capped by net.core.rmem_max."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        return True
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # capped by rmem_max
        return False


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


class _SockaddrNl(ctypes.Structure):
    _fields_ = [("nl_family", ctypes.c_ushort), ("nl_pad", ctypes.c_ushort),
                ("nl_pid", ctypes.c_uint32), ("nl_groups", ctypes.c_uint32)]


def _load_recvmmsg() -> Callable[..., int] | None:
    """libc's recvmmsg as a ctypes function, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


_RECVMMSG = _load_recvmmsg()


class _MultiRecv:
    """Up to ``count`` netlink datagrams per recvmmsg(2) call, without blocking.

    The headers, addresses and buffers are set up once; after a call, one
    precompiled unpack each reads every length and every sender's port id, so
    the per-datagram cost in Python is a tuple.
    """

    def __init__(self, fd: int, count: int = RECV_BATCH, slot: int = RECV_SLOT) -> None:
        if _RECVMMSG is None:
            raise OSError(errno.ENOSYS, "libc has no recvmmsg")
        self._recvmmsg = _RECVMMSG
        self._fd = fd
        self._count = count
        self._data = bytearray(count * slot)
        base = ctypes.addressof((ctypes.c_char * len(self._data)).from_buffer(self._data))
        self._iov = (_IoVec * count)()
        self._names = (_SockaddrNl * count)()
        self._msgs = (_MMsgHdr * count)()
        for i in range(count):
            self._iov[i].iov_base = base + i * slot
            self._iov[i].iov_len = slot
            hdr = self._msgs[i].msg_hdr
            hdr.msg_name = ctypes.addressof(self._names[i])
            hdr.msg_namelen = ctypes.sizeof(_SockaddrNl)
            hdr.msg_iov = ctypes.pointer(self._iov[i])
            hdr.msg_iovlen = 1
        view = memoryview(self._data)
        self._views = [view[i * slot:(i + 1) * slot] for i in range(count)]
        size, off = ctypes.sizeof(_MMsgHdr), _MMsgHdr.msg_len.offset
        self._lengths = struct.Struct("=" + f"{off}xI{size - off - 4}x" * count)
        size, off = ctypes.sizeof(_SockaddrNl), _SockaddrNl.nl_pid.offset
        self._ports = struct.Struct("=" + f"{off}xI{size - off - 4}x" * count)
        self._flags = socket.MSG_DONTWAIT | socket.MSG_TRUNC

    def recv(self) -> list[tuple[memoryview, int, int]]:
        """What is queued, up to ``count`` datagrams, as (buffer, nbytes, sender port).

        Empty when nothing is queued. The buffers are reused by the next call.
        Raises OSError with the call's errno (ENOBUFS after an overrun).
        """
        n = self._recvmmsg(self._fd, self._msgs, self._count, self._flags, None)
        if n <= 0:
            if n == 0:
                return []
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            raise OSError(err, os.strerror(err))
        lengths = self._lengths.unpack_from(self._msgs)
        ports = self._ports.unpack_from(self._names)
        if n == self._count:
            return list(zip(self._views, lengths, ports, strict=True))
        return list(zip(self._views[:n], lengths[:n], ports[:n], strict=True))


class ConnectorSocket:
    """A subscribed proc connector socket.

    Subscribing sends the plain 4-byte LISTEN first and waits for its ACK:
    every kernel answers that one, so a missing ACK means the connector is
    unusable (not the initial namespaces, no CONFIG_PROC_EVENTS). On kernels
    that honour it, an 8-byte ``proc_input`` LISTEN then narrows delivery to
    :data:`CONSUMED`. Its ACK never reaches us: the kernel's filter drops ACKs
    (what = 0) for filtered sockets, so filter support is decided by kernel
    version and confirmed at run time by :attr:`filter_leaks` (an event outside
    the mask proves the filter is not in force).
    """

    def __init__(self, *, rcvbuf_bytes: int = 8 << 20, use_filter: bool = True,
                 ack_timeout_s: float = 1.0, batch: bool = True) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        except OSError as exc:
            raise ConnectorUnavailable(exc.errno, f"cannot open NETLINK_CONNECTOR socket: "
                                       f"{exc.strerror}") from None
        self._buf = bytearray(MAX_DATAGRAM)
        self.filter_leaks = 0
        try:
            forced = self._set_rcvbuf(rcvbuf_bytes)
            try:
                self.sock.bind((0, CN_IDX_PROC))  # port id 0: the kernel assigns one
            except OSError as exc:
                raise ConnectorUnavailable(exc.errno, f"cannot join the proc connector group: "
                                           f"{exc.strerror} (needs CAP_NET_ADMIN before 6.6, "
                                           f"and the initial network namespace)") from None
            self.port_id = self.sock.getsockname()[0]
            self._listen_plain(ack_timeout_s)
            filtered = False
            if use_filter and kernel_supports_filter():
                self._send_control(struct.pack("=II", PROC_CN_MCAST_LISTEN, int(CONSUMED)))
                filtered = True
            self.subscription = Subscription(
                filtered=filtered,
                rcvbuf_bytes=self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                rcvbuf_forced=forced,
            )
            self.sock.setblocking(False)
            self.inode = os.fstat(self.sock.fileno()).st_ino
            self._multi: _MultiRecv | None = None
            if batch and _RECVMMSG is not None:
                self._multi = _MultiRecv(self.sock.fileno())
        except BaseException:
            self.sock.close()
            raise

    def _set_rcvbuf(self, size: int) -> bool:
        return set_receive_buffer(self.sock, size)

    def _send_control(self, payload: bytes) -> None:
        self.sock.send(build_message(payload, port=self.port_id))

    def _listen_plain(self, timeout_s: float) -> None:
        self.sock.settimeout(timeout_s)
        try:
            self._send_control(_U32.pack(PROC_CN_MCAST_LISTEN))
        except OSError as exc:
            raise ConnectorUnavailable(exc.errno, f"LISTEN refused: {exc.strerror}") from None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectorUnavailable(errno.ETIMEDOUT, "no ACK from the proc connector "
                                           "(not in the initial namespaces, or no "
                                           "CONFIG_PROC_EVENTS)")
            self.sock.settimeout(remaining)
            try:
                n, (sender, _groups) = self.sock.recvfrom_into(self._buf, 0, socket.MSG_TRUNC)
            except TimeoutError:
                continue
            except OSError as exc:
                raise ConnectorUnavailable(exc.errno, f"recv failed: {exc.strerror}") from None
            try:
                events = parse_datagram(self._buf, n, sender)
            except ParseError:
                continue
            for ev in events:
                if isinstance(ev, AckEvent):
                    if ev.err:
                        raise ConnectorUnavailable(ev.err, f"LISTEN answered with error "
                                                   f"{os.strerror(ev.err)}")
                    return

    def fileno(self) -> int:
        """The socket's descriptor, for poll()."""
        return self.sock.fileno()

    def recv(self) -> tuple[bytearray, int, int] | None:
        """One datagram as (buffer, nbytes, sender port), or None when nothing is queued.

        The buffer is reused by the next call: parse before calling again.
        Raises :class:`Overrun` when the kernel reports ENOBUFS.
        """
        try:
            n, (sender, _groups) = self.sock.recvfrom_into(self._buf, 0, socket.MSG_TRUNC)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise Overrun() from None
            raise
        return self._buf, n, sender

    @property
    def batched(self) -> bool:
        """True when :meth:`recv_batch` takes many datagrams per system call."""
        return self._multi is not None

    def recv_batch(self) -> list[tuple[bytearray | memoryview, int, int]]:
        """The queued datagrams, up to :data:`RECV_BATCH`, as (buffer, nbytes, sender
        port); empty when nothing is queued. One recvmmsg call, or one :meth:`recv`
        where that is not available.

        The buffers are reused by the next call: parse before calling again.
        Raises :class:`Overrun` when the kernel reports ENOBUFS (after a call that
        returned datagrams, on the next one).
        """
        if self._multi is None:
            got = self.recv()
            return [] if got is None else [got]
        try:
            return self._multi.recv()
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise Overrun() from None
            raise

    def drops(self) -> int | None:
        """The kernel's exact count of messages dropped for this socket, or None if unknown.

        ENOBUFS is raised once per overflow episode; the Drops column of
        /proc/net/netlink counts every message lost.
        """
        return netlink_drops(self.inode)

    def close(self) -> None:
        """Send IGNORE (so the kernel stops counting us as a listener) and close."""
        if self.sock.fileno() < 0:
            return
        try:
            self._send_control(_U32.pack(PROC_CN_MCAST_IGNORE))
        except OSError:
            pass  # closing anyway; the kernel drops the listener with the socket
        self._multi = None  # it holds the descriptor's number, which is about to be reused
        self.sock.close()


def netlink_drops(inode: int, path: str = "/proc/net/netlink") -> int | None:
    """The Drops column of /proc/net/netlink for the socket with this inode."""
    try:
        with open(path, encoding="ascii") as f:
            header = f.readline().split()
            d_col, i_col = header.index("Drops"), header.index("Inode")
            for line in f:
                cols = line.split()
                if len(cols) > max(d_col, i_col) and int(cols[i_col]) == inode:
                    return int(cols[d_col])
    except (OSError, ValueError):
        return None
    return None
