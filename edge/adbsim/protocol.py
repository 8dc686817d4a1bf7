"""adb's device-side transport (AOSP protocol.txt, SYNC.TXT): message headers, one stream per
OPENed service (`shell:`, `exec:`, `sync:`), and one Connection per TCP connection."""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
import time
import types
from typing import TYPE_CHECKING

from .phone import Dropped, LimitedFile, ShellError
from .shell import Shell, Stdin

if TYPE_CHECKING:
    from .server import AdbSim

# ---- transport (protocol.txt) --------------------------------------------------------------
A_SYNC, A_CNXN, A_OPEN, A_OKAY = 0x434E5953, 0x4E584E43, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_AUTH = 0x45534C43, 0x45545257, 0x48545541
A_VERSION = 0x01000001           # >= 0x01000001: payload checksums are not computed
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
HEADER = struct.Struct("<6I")
SYNC_DATA_MAX = 64 * 1024
S_IFREG, S_IFDIR = 0o100000, 0o040000


def _message(cmd: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return HEADER.pack(cmd, arg0, arg1, len(data), 0, cmd ^ 0xFFFFFFFF) + data


# ---- streams -------------------------------------------------------------------------------
class Stream:
    """One adb stream (an OPENed service) with its own worker thread."""

    def __init__(self, conn: "Connection", local_id: int, remote_id: int):
        self.conn, self.local, self.remote = conn, local_id, remote_id
        self.inbox: queue.Queue = queue.Queue()
        self.ready = threading.Semaphore(0)    # an OKAY from the host for our last WRTE
        self.closed = False
        self._buf = b""

    # host -> device
    def read(self, n: int = -1) -> bytes:
        """Stdin for a command: pull WRTE payloads (and OKAY each as it is consumed)."""
        while not self._buf:
            data = self.inbox.get()
            if data is None:
                self.inbox.put(None)
                return b""
            self._buf = data
            self.conn.send(A_OKAY, self.local, self.remote)
        if n < 0 or n >= len(self._buf):
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def read_exact(self, n: int) -> bytes:
        parts, need = [], n
        while need:
            chunk = self.read(need)
            if not chunk:
                raise EOFError
            parts.append(chunk)
            need -= len(chunk)
        return b"".join(parts)

    # device -> host
    def write(self, data: bytes):
        for k in range(0, len(data), self.conn.max_payload):
            if self.closed or self.conn.dead:
                return
            self.conn.send(A_WRTE, self.local, self.remote, data[k:k + self.conn.max_payload])
            while not self.ready.acquire(timeout=0.5):
                if self.closed or self.conn.dead:
                    return

    def close(self):
        if not self.closed:
            self.closed = True
            self.conn.send(A_CLSE, self.local, self.remote)
            self.conn.streams.pop(self.local, None)


class ShellStream(Stream):
    """`shell:CMD` / `exec:CMD` (raw bytes both ways, no exit status) or, when the phone
    advertises shell_v2, `shell,v2[,raw|pty]:CMD` (shell_protocol.h: 5-byte headers, id
    0 stdin, 1 stdout, 2 stderr, 3 exit, 4 close-stdin, 5 window size)."""

    def __init__(self, conn, local_id, remote_id, command: str, v2: bool = False):
        super().__init__(conn, local_id, remote_id)
        self.command, self.v2 = command, v2
        self._left = 0            # v2: stdin bytes left in the current packet

    def stdin_read(self, n: int = -1) -> bytes:
        chunk = self._stdin_read(n)
        self.conn.phone.count_pushed(len(chunk))      # data bytes (the drop fault fires here)
        return chunk

    def _stdin_read(self, n: int) -> bytes:
        if not self.v2:
            return self.read(n)
        while self._left == 0:
            try:
                head = self.read_exact(5)
            except EOFError:
                return b""
            pid, length = head[0], struct.unpack("<I", head[1:])[0]
            if pid == 0:
                self._left = length
            elif pid == 4:
                return b""        # close-stdin: EOF for the command
            elif length:
                self.read_exact(length)   # window size etc.: ignored
        chunk = self.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(chunk)
        return chunk

    def run(self):
        phone = self.conn.phone
        phone.log.append(["<shell>", self.command])
        try:
            stdin = Stdin(types.SimpleNamespace(read=self.stdin_read))
            rc, out = Shell(phone).run(self.command, stdin)
            if self.v2:
                step = self.conn.max_payload - 5
                for k in range(0, len(out), step):
                    self.write(b"\x01" + struct.pack("<I", len(out[k:k + step])) + out[k:k + step])
                self.write(b"\x03" + struct.pack("<I", 1) + bytes([rc & 0xFF]))
            else:
                self.write(out)
        except Dropped:
            self.conn.drop()
            return
        self.close()


class SyncStream(Stream):
    def read_request(self) -> tuple[bytes, int]:
        """One SYNC.TXT request header: 4-byte id (STAT, SEND, DATA ...) and a little-endian length."""
        head = self.read_exact(8)
        return head[:4], struct.unpack("<I", head[4:])[0]

    def run(self):
        try:
            while True:
                sid, n = self.read_request()
                if sid == b"QUIT":
                    break
                arg = self.read_exact(n) if sid in (b"STAT", b"LIST", b"SEND", b"RECV") else b""
                if sid == b"STAT":
                    self._stat(arg.decode(errors="replace"))
                elif sid == b"LIST":
                    self._list(arg.decode(errors="replace"))
                elif sid == b"SEND":
                    if not self._send(arg.decode(errors="replace")):
                        break
                elif sid == b"RECV":
                    self._recv(arg.decode(errors="replace"))
                else:
                    self._fail(f"unknown sync command {sid!r}")
                    break
        except EOFError:
            pass
        except Dropped:
            self.conn.drop()
            return
        self.close()

    def _fail(self, msg: str):
        m = msg.encode()
        self.write(b"FAIL" + struct.pack("<I", len(m)) + m)

    def _stat(self, path):
        hp = self.conn.phone.host(path)
        if hp.exists():
            st = hp.stat()
            mode = (S_IFDIR if hp.is_dir() else S_IFREG) | 0o770
            self.write(b"STAT" + struct.pack("<III", mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))
        else:
            self.write(b"STAT" + struct.pack("<III", 0, 0, 0))

    def _list(self, path):
        hp = self.conn.phone.host(path)
        if hp.is_dir():
            for name in [".", ".."] + sorted(os.listdir(hp)):
                st = (hp / name).stat()
                mode = (S_IFDIR if (hp / name).is_dir() else S_IFREG) | 0o770
                nb = name.encode()
                self.write(b"DENT" + struct.pack("<IIII", mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(nb)) + nb)
        self.write(b"DONE" + b"\0" * 16)

    def _recv(self, path):
        phone = self.conn.phone
        p = phone.norm(path)
        hp = phone.host(p)
        if not hp.is_file() or not phone.can_read(p, "shell"):
            return self._fail(f"open failed: No such file or directory")
        with open(hp, "rb") as f:
            while chunk := f.read(SYNC_DATA_MAX):
                self.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
        self.write(b"DONE" + struct.pack("<I", 0))

    def _send(self, spec: str) -> bool:
        """SEND path,mode; DATA...; DONE mtime. As adbd: a failed file is deleted."""
        phone = self.conn.phone
        path, _, _mode = spec.rpartition(",")
        p = phone.norm(path)
        phone.log.append(["<sync-send>", p])
        hp = phone.host(p)
        error = None
        if not phone.can_write(p, "shell"):
            error = f"couldn't create file: Permission denied"
        else:
            hp.parent.mkdir(parents=True, exist_ok=True)   # adbd makes the parent folders
        f = None if error else LimitedFile(phone, hp, "wb")
        try:
            while True:
                sid, n = self.read_request()
                if sid == b"DONE":
                    break
                if sid != b"DATA" or n > SYNC_DATA_MAX:
                    error = error or f"invalid data message {sid!r}"
                    break
                data = self.read_exact(n)
                phone.count_pushed(n)
                if f is not None and error is None:
                    try:
                        f.write(data)
                    except ShellError:
                        error = "write failed: No space left on device"
        except (Dropped, EOFError):
            if f is not None:
                f.close()
                hp.unlink(missing_ok=True)
            raise
        if f is not None:
            f.close()
        if error:
            if hp.exists() and f is not None:
                hp.unlink()
            self._fail(error)
            return False
        self.write(b"OKAY" + struct.pack("<I", 0))
        return True


class Connection:
    """One TCP connection from the adb server: the transport."""

    def __init__(self, sim: "AdbSim", sock: socket.socket):
        self.sim, self.phone, self.sock = sim, sim.phone, sock
        self.lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.max_payload = 4096
        self.dead = False
        self.online = False
        self._wire = {"in": 0.0, "out": 0.0}    # when each direction of the link is free again
        self._wire_lock = threading.Lock()

    def send(self, cmd, a0, a1, data=b""):
        if self.dead:
            return
        self._throttle(len(data), "out")
        try:
            with self.lock:
                self.sock.sendall(_message(cmd, a0, a1, data))
        except OSError:
            self.dead = True

    def _throttle(self, n, direction: str):
        """A link of `throttle_bps` each way: a message occupies its direction of the wire
        for n / bps seconds after the previous one; the phone's work overlaps with the wire
        time, as on a cable (no credit for idle time, so no bursts)."""
        bps = self.phone.throttle_bps
        if not bps:
            return
        with self._wire_lock:
            now = time.monotonic()
            self._wire[direction] = max(now, self._wire[direction]) + n / bps
            wait = self._wire[direction] - now
        time.sleep(wait)

    def drop(self):
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for s in list(self.streams.values()):
            s.inbox.put(None)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def _read_wire(self, inbox: queue.Queue):
        """The cable into the phone: messages arrive at the link's speed into a small buffer
        (the USB stack's), while the phone handles earlier ones."""
        try:
            while not self.dead:
                cmd, a0, a1, n, _crc, magic = HEADER.unpack(self._recv_exact(24))
                if magic != cmd ^ 0xFFFFFFFF:
                    break
                data = self._recv_exact(n) if n else b""
                self._throttle(n, "in")
                inbox.put((cmd, a0, a1, data))
        except (EOFError, OSError):
            pass
        finally:
            inbox.put(None)

    def serve(self):
        inbox: queue.Queue = queue.Queue(maxsize=8)
        threading.Thread(target=self._read_wire, args=(inbox,), daemon=True).start()
        try:
            while not self.dead and (msg := inbox.get()) is not None:
                self.handle(*msg)
        except (EOFError, OSError):
            pass
        finally:
            self.dead = True
            for s in list(self.streams.values()):
                s.inbox.put(None)
            try:
                self.sock.close()
            except OSError:
                pass
            while not inbox.empty():           # unblock the reader if it waits on a full buffer
                inbox.get_nowait()

    def handle(self, cmd, a0, a1, data):
        phone = self.phone
        if cmd == A_CNXN:
            self.max_payload = min(a1, MAX_PAYLOAD)
            if phone.unauthorized:
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
                return
            self._connect()
        elif cmd == A_AUTH:
            if phone.unauthorized:
                if a0 == AUTH_SIGNATURE:           # wrong key: ask again; the public key
                    self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))   # then waits for a tap
                return
            self._connect()
        elif not self.online:
            return
        elif cmd == A_OPEN:
            service = data.rstrip(b"\0").decode(errors="replace")
            local = self.next_id
            self.next_id += 1
            phone.services.append(service.split(":", 1)[0])
            name, _, command = service.partition(":")
            if name in ("shell", "exec") or (name.startswith("shell,") and phone.shell_v2):
                v2 = "v2" in name.split(",")[1:]
                stream = ShellStream(self, local, a0, command, v2=v2)
            elif service == "sync:":
                stream = SyncStream(self, local, a0)
            else:
                self.send(A_CLSE, 0, a0)
                return
            self.streams[local] = stream
            self.send(A_OKAY, local, a0)
            threading.Thread(target=stream.run, daemon=True).start()
        elif cmd == A_WRTE:
            s = self.streams.get(a1)
            if s is None:
                self.send(A_CLSE, 0, a0)
            else:
                s.inbox.put(data)
        elif cmd == A_OKAY:
            s = self.streams.get(a1)
            if s is not None:
                s.ready.release()
        elif cmd == A_CLSE:
            s = self.streams.pop(a1, None)
            if s is not None:
                s.closed = True
                s.inbox.put(None)

    def _connect(self):
        self.online = True
        p = self.phone.props
        banner = (f"device::ro.product.name={p.get('ro.product.name', 'sim')};"
                  f"ro.product.model={p['ro.product.model'].replace(' ', '_')};"
                  f"ro.product.device={p.get('ro.product.device', 'sim')};"
                  f"features=cmd{',shell_v2' if self.phone.shell_v2 else ''}")
        self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, banner.encode())
