"""How a runner is confined: the sandbox policy, what this machine supports, and the launch plan.

Owns the policy (``off | auto | require``), the probe of the host (bubblewrap, seccomp, Landlock, rlimits),
the seccomp BPF program, the pre-exec trampoline and the bubblewrap argv, and the check of the layers a
runner reports in its hello against the layers that were asked for. It never spawns a runner (that is
:mod:`medigan_iso.runner_process`, which receives :attr:`LaunchPlan.command_prefix`) and never imports model
code.

Layers, each applied before the model's interpreter starts (never from inside the runner: a ``.pth`` file in
a model env runs before the runner's first line):

hygiene (always)
    the environment allow-list of :func:`medigan_iso.runner_process.runner_environment`, pipes on fds 0-2,
    ``close_fds``, a new session.
bubblewrap
    ``bwrap --unshare-all --unshare-user --disable-userns --die-with-parent --new-session --cap-drop ALL``
    with read-only binds of the system, the interpreter, the env and the package, size-capped tmpfs on
    ``/tmp`` and ``/dev/shm``, the output directory as the only writable host path, no network.
seccomp, landlock, rlimits
    applied by the *trampoline*: the env's interpreter started with ``-I -S`` (no site, so no ``.pth`` file
    runs) executing :data:`TRAMPOLINE_SOURCE`, which sets rlimits, ``PR_SET_NO_NEW_PRIVS``, a Landlock
    ruleset (file system, TCP and, where the kernel has them, abstract-socket and signal scopes) and the
    seccomp filter, then runs ``site`` (the env's ``.pth`` files execute now, confined) and the runner
    module in the same process (any other command is ``execv``\\ed). Inside bubblewrap the trampoline
    runs after the namespaces exist (Landlock forbids the mounts bubblewrap makes, so it cannot come first).

``auto`` applies what the machine has and logs what it could not; ``require`` raises
:class:`~medigan_iso.errors.SandboxError` naming the missing layer and how to get it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import platform
import shutil
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from medigan_iso.cgroups import CgroupLimits, CgroupSupport, machine_memory_bytes, probe_cgroups
from medigan_iso.errors import SandboxError, SandboxPolicyError
from medigan_iso.untrusted import get_logger

__all__ = [
    "LAYERS",
    "POLICIES",
    "PRIVATE_DIR_PLACEHOLDER",
    "SANDBOX_ENV",
    "HostSupport",
    "LaunchPlan",
    "LayerSupport",
    "Limits",
    "SandboxConfig",
    "effective_limits",
    "env_uses_cuda",
    "gpu_devices",
    "layers_in_force",
    "plan_launch",
    "probe_host",
    "protection_gaps",
    "resolve_policy",
    "runner_user",
    "seccomp_program",
    "stricter",
    "verify_hello",
]

logger = get_logger(__name__)

Policy = Literal["off", "auto", "require"]
POLICIES: tuple[Policy, ...] = ("off", "auto", "require")
SANDBOX_ENV = "MEDIGAN_ISO_SANDBOX"
LAYERS = ("hygiene", "bubblewrap", "seccomp", "landlock", "rlimits")
CONFINING_LAYERS = ("bubblewrap", "seccomp", "landlock", "rlimits")

GIB = 1024**3
MIB = 1024**2
BWRAP_PROBE_TIMEOUT_S = 10.0

# System paths the interpreter and common wheels (numpy's OpenBLAS, fontconfig) read; bound read-only when
# present. /etc is not bound whole: it can hold pip/netrc/cloud credentials.
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/alternatives", "/etc/fonts")
SYSTEM_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
)
PROC_SELF = "/proc/self"
PROC_MACHINE_FILES = (
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/filesystems",
    "/proc/sys/kernel",
    "/proc/sys/vm",
)
SANDBOX_TMP = "/tmp"
SANDBOX_HOME = "/tmp/home"
# In a command prefix, replaced by runner_process with the runner's private HOME/TMPDIR directory.
PRIVATE_DIR_PLACEHOLDER = "@MEDIGAN_ISO_PRIVATE_DIR@"

# Hints in SandboxError remedies.
BWRAP_REMEDY = (
    "install bubblewrap (`apt-get install bubblewrap`, `dnf install bubblewrap`); on Ubuntu >= 23.10 also "
    "allow it user namespaces (an AppArmor profile for bwrap, or `sysctl "
    "kernel.apparmor_restrict_unprivileged_userns=0`); or run with sandbox='auto'"
)
SECCOMP_REMEDY = "seccomp needs Linux on x86_64 or aarch64 with CONFIG_SECCOMP_FILTER; or use sandbox='auto'"
CGROUP_REMEDY = (
    "run as a non-root user, or give this process a writable cgroup (v2 with memory and pids delegated, "
    "or v1 pids and memory hierarchies); or use sandbox='auto'"
)
LANDLOCK_REMEDY = (
    "Landlock needs Linux >= 5.13 with `lsm=...,landlock` on the kernel command line; or use sandbox='auto'"
)


@dataclass(frozen=True)
class Limits:
    """Resource limits of a sandboxed runner (None = leave the inherited limit). Core dumps are always off.

    Defaults are generous for CPU inference (TensorFlow reserves large address ranges) and never a total
    time limit (DESIGN.md section 6: large jobs must not be killed by a clock); tighten them per deployment.
    """

    address_space_bytes: int | None = 64 * GIB
    cpu_seconds: int | None = None
    file_size_bytes: int | None = 8 * GIB
    open_files: int | None = 4096
    processes: int | None = 4096  # RLIMIT_NPROC; the kernel exempts uid 0 (real root) from it
    # Each of /tmp and /dev/shm inside bubblewrap. tmpfs pages are charged to the runner's cgroup, so the
    # memory limit bounds them too (issue 16: 2 x 2 GiB of RAM held while a runner was warm).
    tmpfs_bytes: int = 512 * MIB
    # cgroup limits (they bind for root too): None memory = MEMORY_FRACTION of the machine's RAM
    memory_bytes: int | None = None
    pids: int | None = 1024  # tasks (threads count) in the runner's group
    cpus: float | None = None

    def rlimits(self) -> list[tuple[str, int, int]]:
        """(resource name, soft, hard) pairs for the trampoline."""
        out = [("RLIMIT_CORE", 0, 0)]
        if self.address_space_bytes is not None:
            out.append(("RLIMIT_AS", self.address_space_bytes, self.address_space_bytes))
        if self.cpu_seconds is not None:
            # soft: SIGXCPU; one second later the hard limit SIGKILLs a process that ignores SIGXCPU
            out.append(("RLIMIT_CPU", self.cpu_seconds, self.cpu_seconds + 1))
        if self.file_size_bytes is not None:
            out.append(("RLIMIT_FSIZE", self.file_size_bytes, self.file_size_bytes))
        if self.open_files is not None:
            out.append(("RLIMIT_NOFILE", self.open_files, self.open_files))
        if self.processes is not None:
            out.append(("RLIMIT_NPROC", self.processes, self.processes))
        return out


MEMORY_FRACTION = 0.5  # default cgroup memory limit: half of the machine's RAM
RESOURCE_KEYS = ("memory_mb", "processes", "cpus", "tmpfs_mb")


def effective_limits(
    limits: Limits, resources: Mapping[str, Any] | None = None, *, machine_memory: int | None = None
) -> Limits:
    """``limits`` with the default memory derived from the machine and a catalogue entry's
    ``execution.resources`` applied (memory capped at the machine's RAM; unknown keys ignored here, the
    schema refuses them)."""
    ram = machine_memory_bytes() if machine_memory is None else machine_memory
    out = limits
    if out.memory_bytes is None and ram:
        out = replace(out, memory_bytes=int(ram * MEMORY_FRACTION))
    res = resources or {}
    if isinstance(res.get("memory_mb"), int) and res["memory_mb"] > 0:
        wanted = int(res["memory_mb"]) * MIB
        out = replace(out, memory_bytes=min(wanted, ram) if ram else wanted)
    if isinstance(res.get("processes"), int) and res["processes"] > 0:
        out = replace(out, pids=int(res["processes"]))
    if isinstance(res.get("cpus"), (int, float)) and res["cpus"] > 0:
        out = replace(out, cpus=float(res["cpus"]))
    if isinstance(res.get("tmpfs_mb"), int) and res["tmpfs_mb"] > 0:
        tmpfs = int(res["tmpfs_mb"]) * MIB
        out = replace(out, tmpfs_bytes=min(tmpfs, out.memory_bytes) if out.memory_bytes else tmpfs)
    return out


@dataclass(frozen=True)
class SandboxConfig:
    """Policy, limits and the bubblewrap to use. ``bwrap`` None searches PATH (the seam tests use)."""

    policy: Policy = "auto"
    limits: Limits = field(default_factory=Limits)
    bwrap: str | os.PathLike[str] | None = None
    layers: tuple[str, ...] = CONFINING_LAYERS  # the confining layers wanted (hygiene is always on)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SandboxPolicyError("sandbox policy", self.policy, POLICIES)
        unknown = set(self.layers) - set(CONFINING_LAYERS)
        if unknown:
            raise ValueError(
                f"unknown sandbox layers {sorted(unknown)}; known: {', '.join(CONFINING_LAYERS)}"
            )


def resolve_policy(
    *requested: str | SandboxConfig | None, environ: Mapping[str, str] | None = None
) -> SandboxConfig:
    """The config in force: the first non-None of ``requested`` (call, then Session), else
    ``$MEDIGAN_ISO_SANDBOX``, else ``auto``. Catalogue entries tighten it later (:func:`stricter`)."""
    environ = os.environ if environ is None else environ
    config: SandboxConfig | None = None
    for item in requested:
        if item is None:
            continue
        config = item if isinstance(item, SandboxConfig) else SandboxConfig(policy=_policy(item))
        break
    if config is None:
        env_value = environ.get(SANDBOX_ENV, "").strip().lower()
        config = SandboxConfig(policy=_policy(env_value, source=SANDBOX_ENV) if env_value else "auto")
    return config


def stricter(config: SandboxConfig, entry_sandbox: Mapping[str, Any] | None) -> SandboxConfig:
    """Apply a catalogue entry's ``execution.sandbox`` ({"policy": ...}): only towards stricter."""
    wanted = (entry_sandbox or {}).get("policy")
    if wanted is None:
        return config
    policy = _policy(str(wanted), source="the catalogue entry's execution.sandbox.policy")
    if POLICIES.index(policy) > POLICIES.index(config.policy):
        return replace(config, policy=policy)
    return config


def _policy(value: str, *, source: str = "sandbox") -> Policy:
    for policy in POLICIES:
        if value == policy:
            return policy
    raise SandboxPolicyError(source, value, POLICIES)


# --- what the machine supports ---------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSupport:
    name: str
    available: bool
    detail: str  # version / ABI when available, the reason when not
    remedy: str | None = None


@dataclass(frozen=True)
class HostSupport:
    """Which confining layers this machine can apply; ``bwrap`` is the working bubblewrap, if any."""

    layers: Mapping[str, LayerSupport]
    bwrap: str | None
    landlock_abi: int
    seccomp_arch: str | None
    cgroups: CgroupSupport = field(default_factory=lambda: CgroupSupport(None, "not probed"))

    @property
    def limits_mechanism(self) -> str:
        """What makes resource limits bind here: a cgroup, rlimits (not for root), or nothing."""
        if self.cgroups.mechanism:
            return f"{self.cgroups.mechanism} (memory, pids, cpu; binds for root)"
        if os.geteuid() == 0:
            return (
                f"rlimits only: RLIMIT_NPROC does not bind for root, no memory limit ({self.cgroups.detail})"
            )
        return f"rlimits (RLIMIT_AS, RLIMIT_NPROC per user; no cgroup: {self.cgroups.detail})"

    def available(self, layer: str) -> bool:
        return layer == "hygiene" or self.layers[layer].available


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0 when absent), via landlock_create_ruleset's version query."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        version = int(libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_uint32(1)))
    except (OSError, AttributeError):
        return 0
    return max(version, 0)


def _seccomp_arch() -> str | None:
    machine = platform.machine()
    if not os.path.exists("/proc/self/status"):  # noqa: PTH110 - a cheap probe
        return None
    return machine if machine in _SYSCALL_TABLES else None


def probe_host(*, bwrap: str | os.PathLike[str] | None = None) -> HostSupport:
    """Probe the layers: bubblewrap by running it (a binary that cannot create namespaces is no sandbox)."""
    layers: dict[str, LayerSupport] = {}
    found = os.fspath(bwrap) if bwrap is not None else shutil.which("bwrap")
    working: str | None = None
    if found is None or not Path(found).is_file():
        layers["bubblewrap"] = LayerSupport(
            "bubblewrap", False, f"no bwrap executable ({found or 'not on PATH'})", BWRAP_REMEDY
        )
    else:
        ok, detail = _try_bwrap(found)
        layers["bubblewrap"] = LayerSupport("bubblewrap", ok, detail, None if ok else BWRAP_REMEDY)
        working = found if ok else None
    arch = _seccomp_arch()
    layers["seccomp"] = (
        LayerSupport("seccomp", True, f"BPF filter for {arch}")
        if arch
        else LayerSupport("seccomp", False, f"no filter for {platform.machine()} here", SECCOMP_REMEDY)
    )
    abi = landlock_abi()
    layers["landlock"] = (
        LayerSupport("landlock", True, f"ABI {abi}" + (" (with TCP rules)" if abi >= 4 else ""))
        if abi >= 1
        else LayerSupport("landlock", False, "landlock_create_ruleset reports no Landlock", LANDLOCK_REMEDY)
    )
    cgroups = probe_cgroups()
    layers["rlimits"] = LayerSupport(
        "rlimits", True, "setrlimit" + (f" + {cgroups.detail}" if cgroups.mechanism else " (no cgroup)")
    )
    return HostSupport(layers=layers, bwrap=working, landlock_abi=abi, seccomp_arch=arch, cgroups=cgroups)


def _try_bwrap(path: str) -> tuple[bool, str]:
    argv = [path, *_BWRAP_FLAGS, "--ro-bind", "/", "/", "--", "/bin/true"]
    try:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=BWRAP_PROBE_TIMEOUT_S, check=False
        ).stdout.strip()
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=BWRAP_PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{path} cannot run: {exc}"
    if done.returncode != 0:
        return False, f"{path} cannot create namespaces: {done.stderr.strip() or done.returncode}"
    return True, f"{version or path} at {path}"


# --- seccomp -----------------------------------------------------------------------------------------

# Syscalls denied with EPERM (socket/socketpair allow AF_UNIX only; clone refuses namespace flags; clone3
# gets ENOSYS so libc falls back to clone, whose flags a filter can read).
_DENIED = (
    "ptrace process_vm_readv process_vm_writev mount umount2 pivot_root chroot unshare setns bpf "
    "io_uring_setup io_uring_enter io_uring_register keyctl add_key request_key kexec_load kexec_file_load "
    "init_module finit_module delete_module perf_event_open userfaultfd open_tree move_mount fsopen fsconfig "
    "fsmount fspick mount_setattr acct swapon swapoff reboot name_to_handle_at open_by_handle_at syslog"
)
# name=number per architecture (from the kernel's syscall tables; the generic table for aarch64)
_SYSCALL_TABLES = {
    "x86_64": (
        "socket=41 socketpair=53 clone=56 clone3=435 ptrace=101 process_vm_readv=310 process_vm_writev=311 "
        "mount=165 umount2=166 pivot_root=155 chroot=161 unshare=272 setns=308 bpf=321 io_uring_setup=425 "
        "io_uring_enter=426 io_uring_register=427 keyctl=250 add_key=248 request_key=249 kexec_load=246 "
        "kexec_file_load=320 init_module=175 finit_module=313 delete_module=176 perf_event_open=298 "
        "userfaultfd=323 open_tree=428 move_mount=429 fsopen=430 fsconfig=431 fsmount=432 fspick=433 "
        "mount_setattr=442 acct=163 swapon=167 swapoff=168 reboot=169 name_to_handle_at=303 "
        "open_by_handle_at=304 syslog=103"
    ),
    "aarch64": (
        "socket=198 socketpair=199 clone=220 clone3=435 ptrace=117 process_vm_readv=270 "
        "process_vm_writev=271 mount=40 umount2=39 pivot_root=41 chroot=51 unshare=97 setns=268 bpf=280 "
        "io_uring_setup=425 "
        "io_uring_enter=426 io_uring_register=427 keyctl=219 add_key=217 request_key=218 kexec_load=104 "
        "kexec_file_load=294 init_module=105 finit_module=273 delete_module=106 perf_event_open=241 "
        "userfaultfd=282 open_tree=428 move_mount=429 fsopen=430 fsconfig=431 fsmount=432 fspick=433 "
        "mount_setattr=442 acct=89 swapon=224 swapoff=225 reboot=142 name_to_handle_at=264 "
        "open_by_handle_at=265 syslog=116"
    ),
}


def _syscall_numbers(arch: str) -> dict[str, int]:
    pairs = (item.partition("=") for item in _SYSCALL_TABLES[arch].split())
    return {name: int(number) for name, _, number in pairs}


_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_SYSCALL_BIT = 0x40000000
_CLONE_NAMESPACE_FLAGS = 0x7E020080  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME
_AF_UNIX = 1
_EPERM, _ENOSYS, _EAFNOSUPPORT = 1, 38, 97
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_JSET_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_KILL_PROCESS, _RET_ALLOW, _RET_ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LOW = 0, 4, 16  # struct seccomp_data; args are little-endian u64 here


def seccomp_program(arch: str | None = None, *, allow_unix_sockets: bool = True) -> bytes:
    """The seccomp BPF filter (struct sock_filter[]) for ``arch`` (default: this machine).

    ``socket`` and ``socketpair`` allow AF_UNIX only; with ``allow_unix_sockets=False`` ``socket`` refuses
    AF_UNIX too (a connected pair from ``socketpair`` reaches nothing outside the process tree).
    """
    arch = arch or platform.machine()
    if arch not in _SYSCALL_TABLES:
        raise ValueError(f"no seccomp filter for architecture {arch!r}")
    nr = _syscall_numbers(arch)

    def ins(code: int, k: int, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
        return (code, jt, jf, k)

    def errno(value: int) -> tuple[int, int, int, int]:
        return ins(_BPF_RET_K, _RET_ERRNO | value)

    prog = [
        ins(_BPF_LD_W_ABS, _OFF_ARCH),
        ins(_BPF_JEQ_K, _AUDIT_ARCH[arch], 1, 0),
        ins(_BPF_RET_K, _RET_KILL_PROCESS),
        ins(_BPF_LD_W_ABS, _OFF_NR),
    ]
    if arch == "x86_64":  # x32 ABI syscall numbers alias the ones below
        prog += [ins(_BPF_JGE_K, _X32_SYSCALL_BIT, 0, 1), errno(_EPERM)]
    for name in _DENIED.split():
        prog += [ins(_BPF_JEQ_K, nr[name], 0, 1), errno(_EPERM)]
    prog += [ins(_BPF_JEQ_K, nr["clone3"], 0, 1), errno(_ENOSYS)]
    for name in ("socket", "socketpair"):  # every block below ends in a return, so A stays nr on skips
        unix_ok = allow_unix_sockets or name == "socketpair"
        prog += [
            ins(_BPF_JEQ_K, nr[name], 0, 4),
            ins(_BPF_LD_W_ABS, _OFF_ARG0_LOW),
            ins(_BPF_JEQ_K, _AF_UNIX, 0, 1),
            ins(_BPF_RET_K, _RET_ALLOW if unix_ok else _RET_ERRNO | _EAFNOSUPPORT),
            errno(_EAFNOSUPPORT),
        ]
    prog += [
        ins(_BPF_JEQ_K, nr["clone"], 0, 4),
        ins(_BPF_LD_W_ABS, _OFF_ARG0_LOW),
        ins(_BPF_JSET_K, _CLONE_NAMESPACE_FLAGS, 0, 1),
        errno(_EPERM),
        ins(_BPF_RET_K, _RET_ALLOW),
        ins(_BPF_RET_K, _RET_ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *i) for i in prog)


# --- the trampoline ----------------------------------------------------------------------------------

# Runs as `<env python> -I -S -c TRAMPOLINE_SOURCE CONFIG_JSON RUNNER_ARGV...`: -S skips site, so no .pth
# file of the env runs before the confinement. Python >= 3.7 (the runner's floor), stdlib only. Exit code
# 126: a layer failed.
TRAMPOLINE_SOURCE = r"""
import ctypes, json, os, resource, stat, struct, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def fail(what):
    err = ctypes.get_errno()
    os.write(2, ("medigan_iso sandbox: cannot apply %s: %s\n" % (what, os.strerror(err))).encode())
    os._exit(126)
for name, soft, hard in cfg["rlimits"]:
    try:
        resource.setrlimit(getattr(resource, name), (soft, hard))
    except (ValueError, OSError) as exc:
        os.write(2, ("medigan_iso sandbox: cannot set %s: %s\n" % (name, exc)).encode())
        os._exit(126)
run_as = cfg.get("run_as")
if run_as:
    # empty the capability bounding set first (CAP_SETPCAP), so nothing can ever be regained
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            fail("PR_CAPBSET_DROP")
    try:
        os.setgroups([])
        os.setresgid(run_as[1], run_as[1], run_as[1])
        os.setresuid(run_as[0], run_as[0], run_as[0])
    except OSError as exc:
        os.write(2, ("medigan_iso sandbox: cannot switch to uid %s: %s\n" % (run_as[0], exc)).encode())
        os._exit(126)
    if os.getuid() != run_as[0] or os.geteuid() != run_as[0] or os.getgid() != run_as[1]:
        os.write(2, b"medigan_iso sandbox: the uid switch did not hold\n")
        os._exit(126)
    # the switch cleared the effective and permitted sets; clear the inheritable one bubblewrap left too
    hdr = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0), 8)
    if libc.capset(hdr, ctypes.create_string_buffer(24)) != 0:
        fail("capset")
    # the switch made the process non-dumpable, so its own /proc/self files became root's: restore that
    # (ptrace stays refused by seccomp; core dumps by RLIMIT_CORE 0)
    if libc.prctl(4, 1, 0, 0, 0) != 0:
        fail("PR_SET_DUMPABLE")
if libc.prctl(38, 1, 0, 0, 0) != 0:
    fail("PR_SET_NO_NEW_PRIVS")
ll = cfg.get("landlock")
if ll:
    abi = libc.syscall(444, None, 0, 1)
    if abi < 1:
        fail("landlock (no ABI)")
    fs = (1 << 13) - 1
    if abi >= 2: fs |= 1 << 13
    if abi >= 3: fs |= 1 << 14
    if abi >= 5: fs |= 1 << 15
    files = 1 | 2 | 4 | (1 << 14) | (1 << 15)
    rights = {"r": 1 | 4 | 8, "rw": fs, "dev": 4 | 8 | (1 << 15), "w-file": 2 | 4 | (1 << 14) | (1 << 15),
              "gpu": 2 | 4 | (1 << 15)}
    attr = struct.pack("=QQQ", fs, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)
    attr = attr[: 8 if abi < 4 else 16 if abi < 6 else 24]
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = libc.syscall(444, buf, len(attr), 0)
    if ruleset < 0:
        fail("landlock_create_ruleset")
    for path, kind in ll:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        allowed = rights[kind] & fs
        if not stat.S_ISDIR(os.fstat(pfd).st_mode):
            allowed &= files
        rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, pfd), 12)
        if libc.syscall(445, ruleset, 1, rule, 0) != 0:
            fail("landlock_add_rule " + path)
        os.close(pfd)
    if libc.syscall(446, ruleset, 0) != 0:
        fail("landlock_restrict_self")
    os.close(ruleset)
sc = cfg.get("seccomp")
if sc:
    raw = bytes.fromhex(sc)
    filt = ctypes.create_string_buffer(raw, len(raw))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = Prog(len(raw) // 8, ctypes.addressof(filt))
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
        fail("seccomp")
argv = sys.argv[2:]
same = os.path.realpath(argv[0]) == os.path.realpath(sys.executable)
if same and len(argv) == 4 and argv[1:3] == ["-I", "-m"]:
    # The same interpreter, already isolated (-I): skip a second interpreter start. site runs now, under
    # the confinement (this is when the env's .pth files execute), then the module as __main__.
    del cfg, ll, sc
    sys.argv = [argv[0]]
    import runpy, site
    site.main()
    runpy.run_module(argv[3], run_name="__main__", alter_sys=True)
    sys.exit(0)
os.execv(argv[0], argv)
"""


@dataclass(frozen=True)
class LaunchPlan:
    """How to start one runner: argv before ``<python> -I -m medigan_iso_runner``, env overrides, layers."""

    policy: Policy
    command_prefix: tuple[str, ...]
    env_overrides: Mapping[str, str | None]
    layers: tuple[str, ...]  # layers applied, hygiene first
    missing: Mapping[str, str]  # wanted layers this machine lacks -> reason
    limits: Limits
    landlock_abi: int = 0
    cgroup: CgroupLimits | None = None  # the runner's cgroup limits, when a cgroup can be made
    gaps: tuple[str, ...] = ()  # what the applied layers leave open (protection_gaps)
    gpus: tuple[str, ...] = ()  # NVIDIA device nodes passed in
    run_as: tuple[int, int] | None = None  # (uid, gid) the trampoline switches to; None: the host's own
    run_as_detail: str = ""  # which user the runner runs as, and why


# A root host's runner switches to this uid/gid (nobody/nogroup) inside bubblewrap, so that RLIMIT_NPROC
# binds (the kernel exempts real uid 0) and nothing of the host's root-owned files is writable to it.
RUNNER_UID = 65534
RUNNER_GID = 65534
# bubblewrap for a root host whose runner switches uid: no user namespace (as root, bubblewrap would map the
# sandbox's uid to the host's uid 0, so every uid inside is still root for the kernel's limits), and only
# the capabilities the trampoline needs: it empties the bounding set (CAP_SETPCAP), then switches uid/gid
# (CAP_SETUID, CAP_SETGID) and so loses the rest (setresuid from 0 to non-zero clears them).
_BWRAP_ROOT_FLAGS = (
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
    "--cap-add",
    "CAP_SETUID",
    "--cap-add",
    "CAP_SETGID",
    "--cap-add",
    "CAP_SETPCAP",
)


_BWRAP_FLAGS = (
    "--unshare-all",
    "--unshare-user",
    "--disable-userns",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "ALL",
)


def interpreter_roots(python: str | os.PathLike[str]) -> list[Path]:
    """The directories an env's interpreter needs: the env, the base installation (pyvenv.cfg ``home``)."""
    py = Path(python)
    env_dir = py.parent.parent
    roots = [env_dir]
    cfg = env_dir / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                roots.append(Path(value.strip()).parent)
    with contextlib.suppress(OSError):
        roots.append(py.resolve(strict=True).parent.parent)
    unique: list[Path] = []
    for root in roots:
        if root not in unique and str(root) != "/":
            unique.append(root)
    return unique


# NVIDIA device nodes a CUDA runner needs (the per-GPU /dev/nvidiaN plus the control and UVM nodes).
NVIDIA_DEVICE_GLOBS = ("nvidia[0-9]*", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
# Read-only driver state CUDA reads besides the user-space libraries (those live under /usr or /lib, which
# the sandbox binds read-only already).
NVIDIA_READ_PATHS = (
    "/proc/driver/nvidia",
    "/sys/module/nvidia",
    "/sys/bus/pci/devices",
    "/sys/devices/pci0000:00",
)
_CUDA_MARKERS = ("nvidia", "torch/lib/libc10_cuda.so", "torch/lib/libtorch_cuda.so", "jaxlib/cuda")


def gpu_devices(dev: str | os.PathLike[str] = "/dev") -> list[str]:
    """The NVIDIA device nodes present under ``dev`` (sorted), or an empty list."""
    root = Path(dev)
    found: set[str] = set()
    for pattern in NVIDIA_DEVICE_GLOBS:
        found.update(str(p) for p in root.glob(pattern) if not p.is_dir())
    return sorted(found)


def env_uses_cuda(python: str | os.PathLike[str]) -> bool:
    """Whether the env of ``python`` holds a CUDA build (NVIDIA wheels, CUDA torch, TensorFlow's CUDA)."""
    env_dir = Path(python).parent.parent
    for site in env_dir.glob("lib/python*/site-packages"):
        for marker in _CUDA_MARKERS:
            if (site / marker).exists():
                return True
        if any(site.glob("tensorflow/**/libcudart*")) or any(site.glob("tensorflow/python/_pywrap_gpu*")):
            return True
    return False


def plan_launch(
    config: SandboxConfig,
    *,
    python: str | os.PathLike[str],
    package_root: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str] | None,
    support: HostSupport | None = None,
    model_id: str | None = None,
    resources: Mapping[str, Any] | None = None,
    gpus: Sequence[str] | None = None,
) -> LaunchPlan:
    """Decide the layers for one runner and build its command prefix.

    ``require`` raises SandboxError for the first wanted layer this machine lacks, and when what remains
    would leave a gap of :func:`protection_gaps`; ``auto`` logs the missing layers once per plan and goes on
    with the rest (the gaps are on the plan, for the caller's first-spawn warning); ``off`` applies hygiene
    only. ``resources`` is the catalogue entry's ``execution.resources``. ``gpus`` are the device nodes to
    pass in (None: every NVIDIA node of this machine when the env holds a CUDA build, else none).
    """
    if config.policy == "off":
        return LaunchPlan("off", (), {}, ("hygiene",), {}, config.limits)
    support = support or probe_host(bwrap=config.bwrap)
    limits = effective_limits(config.limits, resources)
    wanted = [layer for layer in CONFINING_LAYERS if layer in config.layers]
    missing = {layer: support.layers[layer].detail for layer in wanted if not support.available(layer)}
    if missing and config.policy == "require":
        layer = next(iter(missing))
        raise SandboxError(layer, missing[layer], remedy=support.layers[layer].remedy)
    active = [layer for layer in wanted if layer not in missing]
    gaps = protection_gaps(support, active)
    if gaps and config.policy == "require":
        # issue 16: require must not be satisfiable by a configuration that leaks the host
        raise SandboxError(
            gaps[0][0],
            f"the layers in force ({', '.join(active) or 'none'}) leave a gap: {gaps[0][1]}",
            remedy=gaps[0][2],
        )
    if missing:
        logger.warning(
            "sandbox (auto) for %s: running without %s",
            model_id or python,
            "; ".join(f"{layer} ({reason})" for layer, reason in missing.items()),
        )
    cgroup = (
        CgroupLimits(memory_bytes=limits.memory_bytes, pids=limits.pids, cpus=limits.cpus)
        if "rlimits" in active and support.cgroups.mechanism
        else None
    )
    python_path = Path(python)
    roots = interpreter_roots(python_path)
    bwrapped = "bubblewrap" in active
    # Without bubblewrap's own /proc, Landlock grants only this process's /proc/<pid> (the trampoline
    # resolves PROC_SELF) and a few machine-wide files: /proc/<host pid>/environ stays unreadable (issue 16).
    proc = ["/proc"] if bwrapped else [PROC_SELF, *PROC_MACHINE_FILES]
    reads = [*SYSTEM_DIRS, *SYSTEM_FILES, *proc, "/sys/devices/system/cpu", *map(str, roots)]
    devices = list(gpus) if gpus is not None else (gpu_devices() if env_uses_cuda(python) else [])
    if devices:
        reads += list(NVIDIA_READ_PATHS)
    if package_root is not None:
        reads.append(os.fspath(package_root))
    overrides: dict[str, str | None] = {}
    prefix: list[str] = []
    trampoline = [layer for layer in active if layer != "bubblewrap"]
    run_as, run_as_detail = _runner_identity(
        bwrap=support.bwrap if bwrapped else None,
        trampoline=bool(trampoline),
        output_dir=output_dir,
        reads=[python_path, *roots, *([Path(package_root)] if package_root is not None else [])],
    )
    if bwrapped:
        assert support.bwrap is not None
        prefix = [
            support.bwrap,
            *_bwrap_args(limits, roots, package_root, output_dir, gpus=devices, run_as=run_as),
        ]
        # The runner is pid 2 under bubblewrap's init (pid 1), which dies with bwrap (--die-with-parent)
        # and takes the whole pid namespace with it; the runner's parent must stay that init.
        overrides.update(
            {
                "HOME": SANDBOX_HOME,
                "TMPDIR": SANDBOX_TMP,
                "MEDIGAN_ISO_RUNNER_PARENT_PID": "1",
                "MEDIGAN_ISO_RUNNER_PDEATHSIG": "1",
            }
        )
    elif active:
        overrides["MEDIGAN_ISO_RUNNER_PARENT_PID"] = str(os.getpid())  # the trampoline execs in place
    if trampoline:
        cfg: dict[str, Any] = {"rlimits": limits.rlimits() if "rlimits" in active else []}
        if run_as is not None:
            cfg["run_as"] = list(run_as)
        if "landlock" in active:
            rules = [[p, "r"] for p in reads] + [["/dev", "dev"], ["/dev/null", "w-file"]]
            rules += [[device, "gpu"] for device in devices]
            if output_dir is not None:
                rules.append([os.fspath(output_dir), "rw"])
            # the private HOME/TMPDIR: a tmpfs inside bubblewrap; without it the runner's temp dir, whose
            # path runner_process chooses at spawn and fills in for the placeholder
            if bwrapped:
                rules += [[SANDBOX_TMP, "rw"], ["/dev/shm", "rw"]]
            else:
                rules.append([PRIVATE_DIR_PLACEHOLDER, "rw"])
            cfg["landlock"] = rules
        if "seccomp" in active:
            # Outside bubblewrap's network namespace a Unix socket reaches the host's (a path-named socket
            # such as a docker or X11 one was connectable, issue 16): socket(AF_UNIX) is refused too.
            program = seccomp_program(support.seccomp_arch, allow_unix_sockets=bwrapped)
            cfg["seccomp"] = program.hex()
        prefix += [os.fspath(python_path), "-I", "-S", "-c", TRAMPOLINE_SOURCE, json.dumps(cfg)]
    return LaunchPlan(
        config.policy,
        tuple(prefix),
        overrides,
        ("hygiene", *active),
        missing,
        limits,
        landlock_abi=support.landlock_abi if "landlock" in active else 0,
        cgroup=cgroup,
        gpus=tuple(devices),
        gaps=tuple(reason for _, reason, _ in gaps),
        run_as=run_as,
        run_as_detail=run_as_detail,
    )


def runner_user(support: HostSupport) -> str:
    """Which user runners of this host run as under ``auto``/``require`` (for ``doctor``)."""
    uid = os.geteuid()
    if uid != 0:
        return f"uid {uid} (the host's own, not root)"
    if support.bwrap is None:
        return "root: switching uid needs bubblewrap (RLIMIT_NPROC does not bind for root)"
    works, detail = _bwrap_runs_without_userns(support.bwrap)
    if not works:
        return f"root: bubblewrap cannot run without a user namespace here ({detail})"
    return (
        f"uid {RUNNER_UID} inside bubblewrap (host is root; RLIMIT_NPROC binds); runners that write an "
        "output folder of the host themselves (save_images) stay root"
    )


@functools.lru_cache(maxsize=4)
def _bwrap_runs_without_userns(bwrap: str) -> tuple[bool, str]:
    """Whether bubblewrap works with the flags of a uid-switching root runner (no user namespace: a
    container without CAP_SYS_ADMIN may allow only the user-namespace form)."""
    argv = [bwrap, *_BWRAP_ROOT_FLAGS, "--ro-bind", "/", "/", "--", "/bin/true"]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=BWRAP_PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, done.stderr.strip() or f"exit code {done.returncode}"


def _runner_identity(
    *, bwrap: str | None, trampoline: bool, output_dir: str | os.PathLike[str] | None, reads: Sequence[Path]
) -> tuple[tuple[int, int] | None, str]:
    """Which uid the runner runs as: a root host's runner switches to RUNNER_UID where that is safe."""
    uid = os.geteuid()
    if uid != 0:
        return None, f"uid {uid} (the host's own, not root)"
    if bwrap is None or not trampoline:
        return None, "root: switching uid needs bubblewrap and the trampoline (RLIMIT_NPROC does not bind)"
    works, detail = _bwrap_runs_without_userns(bwrap)
    if not works:
        return None, f"root: bubblewrap cannot run without a user namespace here ({detail})"
    if output_dir is not None:
        # the model writes there itself (save_images); files it made as another uid would be foreign there
        return None, "root: this runner writes an output folder of the host (RLIMIT_NPROC does not bind)"
    for path in reads:
        with contextlib.suppress(OSError):
            mode = Path(path).resolve().stat().st_mode
            if not mode & 0o004 or (Path(path).is_dir() and not mode & 0o001):
                return None, f"root: {path} is not readable by other users (RLIMIT_NPROC does not bind)"
    return (RUNNER_UID, RUNNER_GID), f"uid {RUNNER_UID} inside bubblewrap (host is root; RLIMIT_NPROC binds)"


def protection_gaps(support: HostSupport, active: Sequence[str]) -> list[tuple[str, str, str]]:
    """What the layers in ``active`` leave open on this host: (layer that would close it, gap, remedy).

    Each is a hole a red-team model used (issue 16, finding 4). ``doctor`` prints them for ``auto``; a
    runner's first spawn warns with them; ``require`` refuses to run with any.
    """
    gaps: list[tuple[str, str, str]] = []
    bwrapped = "bubblewrap" in active
    if not bwrapped and "landlock" not in active:
        gaps.append(
            (
                "landlock",
                "/proc of host processes is readable (their environment variables, command lines)",
                BWRAP_REMEDY,
            )
        )
    if not bwrapped and "seccomp" not in active:
        gaps.append(
            ("seccomp", "the network and path-named Unix sockets on the host are reachable", BWRAP_REMEDY)
        )
    if not bwrapped and not support.cgroups.mechanism:
        gaps.append(
            (
                "bubblewrap",
                "a setsid daemon started by the model can outlive the host (no pid namespace, no cgroup)",
                BWRAP_REMEDY,
            )
        )
    if "rlimits" in active and not support.cgroups.mechanism and os.geteuid() == 0:
        gaps.append(
            (
                "rlimits",
                "running as root without a cgroup: RLIMIT_NPROC does not bind for root (fork bombs) and "
                f"there is no memory limit ({support.cgroups.detail})",
                CGROUP_REMEDY,
            )
        )
    return gaps


def _bwrap_args(
    limits: Limits,
    roots: Sequence[Path],
    package_root: str | os.PathLike[str] | None,
    output_dir: str | os.PathLike[str] | None,
    *,
    gpus: Sequence[str] = (),
    run_as: tuple[int, int] | None = None,
) -> list[str]:
    args = list(_BWRAP_FLAGS if run_as is None else _BWRAP_ROOT_FLAGS)
    for path in SYSTEM_DIRS:
        if os.path.islink(path):  # noqa: PTH114 - merged /usr: /lib -> usr/lib
            args += ["--symlink", os.fspath(Path(path).readlink()), path]
        elif os.path.isdir(path):  # noqa: PTH112
            args += ["--ro-bind", path, path]
    for path in SYSTEM_FILES:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    # GPUs: exactly the NVIDIA nodes (``--dev`` gives a minimal /dev without them) and the driver's state
    for device in gpus:
        args += ["--dev-bind", device, device]
    if gpus:
        for path in NVIDIA_READ_PATHS:
            if not path.startswith("/proc/"):  # bwrap's own /proc shows /proc/driver already
                args += ["--ro-bind-try", path, path]
    size = str(limits.tmpfs_bytes)
    # a runner under another uid than bubblewrap's own needs its private dirs writable (sticky, like /tmp)
    perms = ["--perms", "1777"] if run_as is not None else []
    args += [*perms, "--size", size, "--tmpfs", SANDBOX_TMP, *perms, "--size", size, "--tmpfs", "/dev/shm"]
    args += [*perms, "--dir", SANDBOX_HOME]
    if run_as is not None:
        # bubblewrap makes the missing parents of a bind's destination 0700 (/root, /root/.pyenv, ...):
        # make them 0755 first, or a runner under another uid cannot reach what is bound below them
        bound = [*map(str, roots), *(os.fspath(p) for p in (package_root, output_dir) if p is not None)]
        args += _traversable_parents(bound)
    for root in roots:
        args += ["--ro-bind", str(root), str(root)]
    if package_root is not None:
        args += ["--ro-bind", os.fspath(package_root), os.fspath(package_root)]
    if output_dir is not None:
        args += ["--bind", os.fspath(output_dir), os.fspath(output_dir)]
    args += ["--chdir", SANDBOX_TMP, "--"]
    return args


def _traversable_parents(paths: Sequence[str]) -> list[str]:
    """``--perms 0755 --dir`` for each missing parent of ``paths`` (not /, /tmp, /dev, /proc or system
    dirs, which exist already; folders below /tmp are on the sandbox's own tmpfs, so they are made too)."""
    mounted = ("/dev", "/proc", *SYSTEM_DIRS)
    parents: list[str] = []
    for path in paths:
        for parent in reversed(Path(path).parents):
            text = str(parent)
            skip = text in ("/", SANDBOX_TMP) or any(text == m or text.startswith(m + "/") for m in mounted)
            if not skip and text not in parents:
                parents.append(text)
    args: list[str] = []
    for folder in sorted(parents, key=lambda p: p.count("/")):
        args += ["--perms", "0755", "--dir", folder]
    return args


# --- what the runner reports -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _host_namespaces() -> dict[str, str]:
    out = {}
    for name in ("mnt", "net", "pid", "user", "ipc", "uts"):
        with contextlib.suppress(OSError):
            out[name] = os.fspath(Path(f"/proc/self/ns/{name}").readlink())
    return out


def layers_in_force(
    report: Any, *, limits: Limits | None = None, run_as: tuple[int, int] | None = None
) -> frozenset[str]:
    """The confining layers a runner's hello ``sandbox`` report proves, compared with this host's view.

    With ``run_as`` (a root host's runner switched uid) bubblewrap made no user namespace: the report must
    show that uid instead of a user namespace of its own.
    """
    if not isinstance(report, Mapping):
        return frozenset({"hygiene"})
    found = {"hygiene"}
    namespaces = report.get("namespaces") or {}
    host = _host_namespaces()
    if (
        host
        and isinstance(namespaces, Mapping)
        and all(
            namespaces.get(name) not in (None, host_id)
            for name, host_id in host.items()
            if not (run_as is not None and name == "user")
        )
        and (run_as is None or [report.get("uid"), report.get("gid")] == list(run_as))
    ):
        found.add("bubblewrap")
    if report.get("seccomp") == 2 and report.get("no_new_privs") == 1:
        found.add("seccomp")
    if report.get("landlock_enforced") is True:
        found.add("landlock")
    reported = report.get("rlimits") or {}
    if isinstance(reported, Mapping) and reported.get("RLIMIT_CORE") == [0, 0]:
        expected = limits.rlimits() if limits is not None else []
        if all(list(reported.get(name) or []) == [soft, hard] for name, soft, hard in expected):
            found.add("rlimits")
    return frozenset(found)


def verify_hello(plan: LaunchPlan, hello: Mapping[str, Any], *, model_id: str | None = None) -> None:
    """Check the runner's own report against the plan; a layer asked for but not in force raises.

    Raised for every policy but ``off``: a layer the host applied and the runner does not see is a broken
    sandbox, not a missing feature.
    """
    if plan.policy == "off":
        return
    in_force = layers_in_force(hello.get("sandbox"), limits=plan.limits, run_as=plan.run_as)
    absent = [layer for layer in plan.layers if layer not in in_force]
    if absent:
        raise SandboxError(
            absent[0],
            f"asked for {', '.join(plan.layers)} but the runner of {model_id or 'the model'} reports "
            f"{', '.join(sorted(in_force))} in force ({dict(hello.get('sandbox') or {})})",
            remedy="the runner in the env may be old: rebuild the env (`medigan-iso env build MODEL "
            "--rebuild`); otherwise report this as a bug",
        )
