"""Move the calling process into a private network namespace with only a loopback interface.

Everything the harness starts afterwards inherits it, so the control plane's ports (and the hollow
kubelet's unconditional 0.0.0.0:10250) are reachable from the tests and invisible to the machine.
It needs root (CAP_SYS_ADMIN). It must run on the main thread before the processes are started:
a network namespace belongs to the thread that unshared it and to what that thread starts later.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from pathlib import Path

_CLONE_NEWNET = 0x40000000
NODE_IP = "10.250.0.1"
# The network namespace this process started in, kept open once it moved to a private one.
_starting_network: list[int] = []


class NamespaceError(RuntimeError):
    pass


def in_private_network() -> bool:
    if _starting_network:
        return True
    try:
        return Path("/proc/self/ns/net").stat().st_ino != Path("/proc/1/ns/net").stat().st_ino
    except OSError:  # /proc/1 unreadable: be conservative and make our own
        return False


def enter_private_network() -> None:
    if in_private_network():
        return
    if threading.current_thread() is not threading.main_thread():
        raise NamespaceError("enter_private_network() must be called from the main thread")
    if os.geteuid() != 0:
        raise NamespaceError(
            "the local control plane runs in a private network namespace and needs root "
            "(run the tests or the demo as root, e.g. in a disposable VM or container)"
        )
    libc = ctypes.CDLL(None, use_errno=True)
    starting = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    if libc.unshare(_CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        os.close(starting)
        raise NamespaceError(f"unshare(CLONE_NEWNET) failed: {os.strerror(errno)}")
    _starting_network.append(starting)
    _ip("link", "set", "lo", "up")
    _add_node_address()


def _add_node_address() -> None:
    """Give the namespace a default route and a non-loopback address for the hollow kubelet.

    The kubelet takes the node's InternalIP from the default route's interface; without one it
    reports no address. A veth pair whose peer stays in this namespace leads nowhere, so nothing
    leaves the namespace. Without veth support, an address on lo does the same job.
    """
    try:
        _ip("link", "add", "rgs0", "type", "veth", "peer", "name", "rgs1")
        _ip("addr", "add", f"{NODE_IP}/24", "dev", "rgs0")
        _ip("link", "set", "rgs1", "up")
        _ip("link", "set", "rgs0", "up")
        _ip("route", "add", "default", "dev", "rgs0")
    except subprocess.CalledProcessError:
        _ip("addr", "add", f"{NODE_IP}/32", "dev", "lo")
        _ip("route", "add", "default", "dev", "lo")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def host_network_command(argv: list[str]) -> list[str]:
    """``argv`` to run in the machine's network namespace (package registries), from anywhere.

    Once the control plane started, this process lives in a private namespace with no way out;
    downloads (apt, the Go module proxy, PyPI) then run through ``nsenter`` in the namespace it
    started in (or PID 1's, when it was started in a private one already).
    """
    if _starting_network:
        return ["nsenter", f"--net=/proc/{os.getpid()}/fd/{_starting_network[0]}", "--", *argv]
    if not in_private_network():
        return list(argv)
    return ["nsenter", "--net=/proc/1/ns/net", "--", *argv]
