"""systemd's readiness and watchdog notifications (sd_notify(3)), without libsystemd.

With `Type=notify` (systemd/*.service) systemd passes an AF_UNIX datagram socket in
$NOTIFY_SOCKET and waits for "READY=1"; with `WatchdogSec=` it also sets $WATCHDOG_USEC and
$WATCHDOG_PID and restarts the service when "WATCHDOG=1" stops coming. Outside systemd (tests,
a terminal) there is no socket and every call is a no-op that returns False.

    notify("READY=1")                        # once started
    interval = watchdog_interval_s()         # None: no watchdog for this process
    while running: notify("WATCHDOG=1"); await asyncio.sleep(interval)
    notify("STOPPING=1")                     # on SIGTERM, before draining
"""

from __future__ import annotations

import os
import socket


def _address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):  # Linux abstract namespace
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    return None  # unset, or a form we do not speak (vsock:CID:PORT, used by VMs)


def notify(state: str) -> bool:
    """Send newline-separated `KEY=value` assignments to the service manager; True if sent.

    Never blocks and never raises: a full or missing socket returns False, and a watchdog
    notification lost that way is simply sent again at the next interval.
    """
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # called from the event loop: must not wait on systemd
            sock.sendto(state.encode("utf-8"), address)
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to send WATCHDOG=1: half of WatchdogSec, as sd_watchdog_enabled(3) advises.

    None when systemd set no watchdog, or set it for another process (a child inherits the
    environment but is not the one being watched).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None
