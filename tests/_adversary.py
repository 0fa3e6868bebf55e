"""An adversarial model package for the sandbox tests: its ``attack`` kwarg selects what it tries.

Every attack returns one sample, a dict of strings describing what happened from the inside (``"ok"`` or the
exception), so a test can print it; the verdict is always taken from the host side (a listener that
received nothing, a file that does not exist, a process that is gone).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

ADVERSARY_INIT = """
import ctypes
import os
import socket
import sys
import time

import numpy as np


def _try(results, name, action):
    try:
        action()
        results[name] = "ok"
    except BaseException as exc:
        results[name] = "%s: %s" % (type(exc).__name__, exc)


def _tcp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(("127.0.0.1", port))
    s.sendall(b"leak")
    s.close()


def _udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"leak", ("127.0.0.1", port))
    s.close()


def _unix(address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(address)
    s.sendall(b"leak")
    s.close()


def _write(path):
    with open(path, "w") as fh:
        fh.write("escaped")


def _name(marker):
    libc = ctypes.CDLL(None)
    libc.prctl(15, marker.encode()[:15], 0, 0, 0)  # PR_SET_NAME: the host finds us by /proc/<pid>/comm


_CALLS = []


def generate(model_file, num_samples, output_path, save_images, attack="none", **kw):
    results = {}
    if attack == "network":
        _try(results, "tcp", lambda: _tcp(kw["tcp_port"]))
        _try(results, "udp", lambda: _udp(kw["udp_port"]))
        _try(results, "unix_path", lambda: _unix(kw["unix_path"]))
        _try(results, "unix_abstract", lambda: _unix("\\0" + kw["abstract_name"]))
        _try(results, "af_inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
    elif attack == "write":
        for i, path in enumerate(kw["paths"]):
            _try(results, "w%d" % i, lambda path=path: _write(path))
    elif attack == "environ":
        results = dict(os.environ)
        with open("/proc/self/environ", "rb") as fh:
            results["__proc_environ__"] = fh.read().decode("utf-8", "replace")
    elif attack == "daemon":
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                _name(kw["marker"])
                os.closerange(3, 1024)
                time.sleep(300)
            os._exit(0)
        os.waitpid(pid, 0)
    elif attack == "pipe":
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                target = os.readlink("/proc/self/fd/%d" % fd)
                with open("/proc/self/fdinfo/%d" % fd) as info:
                    flags = int(info.read().split("flags:")[1].split()[0], 8)
            except (OSError, IndexError, ValueError):
                continue
            if fd > 2 and target.startswith("pipe:") and flags & 3 == os.O_WRONLY:
                os.write(fd, b"\\xff" * 64 + b"garbage that is no frame")
                results["wrote"] = str(fd)
        time.sleep(30)
    elif attack == "memory":
        hoard = []
        while True:
            hoard.append(np.ones(64 * 1024 * 1024, dtype=np.uint8))
    elif attack == "spin":
        while True:
            pass
    elif attack == "forkbomb":
        children = 0
        for _ in range(kw.get("max_forks", 200)):
            try:
                pid = os.fork()
            except OSError as exc:
                results["fork"] = str(exc)
                break
            if pid == 0:
                _name(kw["marker"])
                time.sleep(300)
                os._exit(0)
            children += 1
        results["children"] = str(children)
        time.sleep(300)
    elif attack == "array":  # big random arrays: the shared-memory transport under the sandbox
        _CALLS.append(num_samples)  # each batch differs from the last, so a slot mix-up shows
        rng = np.random.default_rng([kw["rng_seed"], len(_CALLS)])
        return [rng.integers(0, 256, size=kw["nbytes"], dtype=np.uint8) for _ in range(num_samples)]
    elif attack == "diskfill":
        chunk = b"x" * (1024 * 1024)
        with open(os.path.join(output_path or kw["target"], "fill.bin"), "wb") as fh:
            for _ in range(kw.get("max_mib", 4096)):
                fh.write(chunk)
                fh.flush()
    return [results] * num_samples
"""


def write_adversary(root: Path) -> Path:
    """Write the adversary package to ``root`` and return ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text(textwrap.dedent(ADVERSARY_INIT), encoding="utf-8")
    np.save(root / "weights.npy", np.zeros(4, dtype=np.uint8))
    return root
