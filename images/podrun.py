"""Run a command in an image's root filesystem the way the chart's pod runs the service.

    python3 images/podrun.py ROOTFS [--user UID:GID] [--workdir DIR] [--env K=V ...] -- COMMAND [ARG ...]

ROOTFS is an unpacked image, e.g. ``buildah mount``'s answer for a container made with ``buildah from``
(tests/test_image.py does this). The pod's constraints (charts/kpack-image-builder/values.yaml):
a numeric non-root user, a read-only root filesystem with only /tmp writable (the chart's emptyDir),
no capabilities (bounding set emptied too) and no privilege gain (no_new_privs). The process also gets
its own PID namespace (it is PID 1, as a container's entrypoint is) and its own network namespace with
loopback only, so what it binds cannot collide with the host's ports, and it shows the command needs
no network.

Why not ``buildah run``: it has no read-only root filesystem (its chroot isolation makes mount points
on the root, and OCI isolation needs a runtime that can set up cgroups, which crun cannot on hosts with
hybrid cgroups). This script is the small runtime that does what the pod needs, with util-linux's
``unshare`` and ``mount``. Linux, as root. Standard library only.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# What a container runtime gives a pod's /dev; bound from the host's.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rootfs", type=Path)
    parser.add_argument("--user", default="65532:65532", help="UID:GID, numeric (default 65532:65532)")
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--env", action="append", default=[], metavar="K=V")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="+")
    return parser.parse_args(argv)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2: a new network namespace starts with lo down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def enter(args: argparse.Namespace) -> None:
    """In the new namespaces (PID 1 of its PID namespace): lay out the filesystem, drop privileges, exec."""
    root = str(args.rootfs.resolve())
    mount("--make-rprivate", "/")  # nothing below leaks into the host's mount namespace
    mount("--bind", root, root)
    mount("-o", "remount,bind,ro", root)
    mount("-t", "tmpfs", "-o", "nosuid,nodev,mode=1777", "tmpfs", f"{root}/tmp")
    mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{root}/proc")
    mount("-t", "tmpfs", "-o", "nosuid,noexec,mode=755", "tmpfs", f"{root}/dev")
    for dev in DEVICES:
        Path(f"{root}/dev/{dev}").touch()
        mount("--bind", f"/dev/{dev}", f"{root}/dev/{dev}")
    mount("-o", "remount,bind,ro", f"{root}/dev")
    loopback_up()
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    uid, gid = (int(part) for part in args.user.split(":"))
    libc = ctypes.CDLL(None, use_errno=True)
    os.chroot(root)
    os.chdir(args.workdir)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    for cap in range(last_cap + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"dropping capability {cap}")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "setting no_new_privs")
    # Without SECBIT_KEEP_CAPS, leaving uid 0 clears the permitted and effective capabilities.
    os.setresuid(uid, uid, uid)
    env = dict(item.split("=", 1) for item in args.env)
    os.execvpe(args.command[0], args.command, env)


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.inside:
        enter(args)
    if os.geteuid() != 0:
        sys.exit("podrun: must run as root (it mounts and chroots)")
    # --kill-child: the command dies with this process (a test's timeout kills the whole pod).
    unshare = ["unshare", "--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child"]
    os.execvp(unshare[0], [*unshare, sys.executable, os.path.abspath(__file__), "--inside", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
