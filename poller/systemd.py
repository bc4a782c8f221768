"""sd_notify without dependencies: READY, RELOADING, STOPPING, WATCHDOG and STATUS.

Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time


class SystemdNotifier:
    """Sends state changes to systemd's notification socket, if there is one."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]  # an abstract socket
        elif address.startswith("/"):
            self._address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Ping at half the deadline, as sd_watchdog_enabled(3) advises.
            self.watchdog_interval = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        """Whether systemd listens."""
        return self._address is not None

    def notify(self, *fields: str) -> None:
        """Send `KEY=VALUE` lines; errors are ignored (systemd may be gone on shutdown)."""
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall("\n".join(fields).encode())
        except OSError:
            pass

    def ready(self, status: str = "") -> None:
        """The service is up."""
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        """A reload began; systemd wants the monotonic time with it."""
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        """A graceful stop began."""
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """The event loop is alive."""
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        """A one-line status shown by `systemctl status`."""
        self.notify(f"STATUS={text}")
