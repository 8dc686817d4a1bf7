"""The phone on a loopback port (`AdbSim`) and a private REAL adb server to attach it to
(`AdbServer`), for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import threading
import time

from .phone import Phone
from .protocol import Connection


class AdbSim:
    """Listen on 127.0.0.1:port and serve the phone to every adb connection."""

    def __init__(self, phone: Phone | None = None, port: int = 0, **phone_kw):
        self.phone = phone or Phone(**phone_kw)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.serial = f"127.0.0.1:{self.port}"
        self.connections: list[Connection] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = Connection(self, sock)
            self.connections.append(c)
            threading.Thread(target=c.serve, daemon=True).start()

    def drop_all(self):
        for c in self.connections:
            if not c.dead:
                c.drop()

    def close(self):
        self._stop = True
        self.listener.close()
        self.drop_all()
        self.phone.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- helpers for tests and benchmarks: a private adb server ----------------------------------
class AdbServer:
    """A private adb server (real adb) on a free port; `attach(sim)` = `adb connect`."""

    def __init__(self):
        import subprocess
        self._sp = subprocess
        s = socket.create_server(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.old = os.environ.get("ANDROID_ADB_SERVER_PORT")
        os.environ["ANDROID_ADB_SERVER_PORT"] = str(self.port)
        self.adb("start-server")

    def adb(self, *args: str, timeout: float = 60) -> str:
        r = self._sp.run(["adb", *args], stdout=self._sp.PIPE, stderr=self._sp.STDOUT, timeout=timeout,
                         env={**os.environ, "ANDROID_ADB_SERVER_PORT": str(self.port)})
        return r.stdout.decode(errors="replace")

    def attach(self, sim: AdbSim, wait_s: float = 10.0) -> str:
        return self.connect(sim.serial, "unauthorized" if sim.phone.unauthorized else "device", wait_s)

    def connect(self, serial: str, want: str = "device", wait_s: float = 10.0) -> str:
        """`adb connect serial` (a simulator in this or another process); wait until listed as `want`."""
        self.adb("connect", serial)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if f"{serial}\t{want}" in self.adb("devices"):
                return serial
            time.sleep(0.05)
        raise RuntimeError(f"adb did not list {serial} as {want}: {self.adb('devices')}")

    def detach(self, sim: AdbSim) -> None:
        self.adb("disconnect", sim.serial)

    def close(self):
        self.adb("kill-server")
        if self.old is None:
            os.environ.pop("ANDROID_ADB_SERVER_PORT", None)
        else:
            os.environ["ANDROID_ADB_SERVER_PORT"] = self.old
