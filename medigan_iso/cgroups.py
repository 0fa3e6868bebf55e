"""Per-runner control groups: memory, process and CPU limits that bind for root too, and a kill of everything.

Issue 16, finding 6: ``RLIMIT_NPROC`` does not bind for uid 0 (200 children went through a cap of 64) and an
address-space limit is no memory limit. A cgroup does both for any uid: ``pids.max`` stops a fork bomb,
the memory limit stops an allocation (the kernel OOM-kills inside the group only), a CPU quota caps cores,
and on close every process left in the group is killed, setsid daemons included.

This module owns creating, joining (the argv prefix that moves the runner in before it executes anything),
reading the events of, killing and removing such a group. It never spawns anything itself. Two layouts:

cgroup v2
    a child of this process's own cgroup, when that cgroup already delegates ``memory`` and ``pids`` to its
    children (``cgroup.subtree_control``); ``cgroup.kill`` ends the group.
cgroup v1
    one child per controller hierarchy (``pids``, ``memory``, ``cpu``) under this process's cgroup in each,
    when the hierarchies are mounted writable (containers often have them); the group is ended by signalling
    every pid listed in ``cgroup.procs`` until it is empty.

Anything else (no writable hierarchy, no delegation): :func:`probe_cgroups` says why, and the sandbox falls
back to rlimits, which the doctor reports as not binding for root.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CgroupLimits",
    "CgroupSupport",
    "RunnerCgroup",
    "machine_memory_bytes",
    "probe_cgroups",
    "remove_stale_groups",
]

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("pids", "memory", "cpu")
CPU_PERIOD_US = 100_000
KILL_WAIT_S = 5.0
_COUNTER = itertools.count()


def machine_memory_bytes() -> int:
    """Physical memory of this machine (``MemTotal``), or 0 when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:  # noqa: PTH123
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass(frozen=True)
class CgroupLimits:
    """What one runner's group enforces (None = no limit of that kind)."""

    memory_bytes: int | None
    pids: int | None
    cpus: float | None = None


NO_LIMITS = CgroupLimits(memory_bytes=None, pids=None)


@dataclass(frozen=True)
class CgroupSupport:
    """The cgroup layout this host offers: ``mechanism`` "cgroup2", "cgroup1" or None (``detail``: why)."""

    mechanism: str | None
    detail: str
    bases: Mapping[str, Path] = field(default_factory=dict)  # controller ("" for v2) -> parent directory


def _own_cgroups(proc_self_cgroup: str) -> dict[str, str]:
    """controller name (or "" for the v2 line) -> this process's path in that hierarchy."""
    out: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for name in controllers.split(","):
            if name:
                out[name] = path
    return out


def _writable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK)


def probe_cgroups(root: Path = CGROUP_ROOT) -> CgroupSupport:
    """Find a place to create runner groups; never raises."""
    try:
        own = _own_cgroups(Path("/proc/self/cgroup").read_text(encoding="ascii"))
    except OSError as exc:
        return CgroupSupport(None, f"cannot read /proc/self/cgroup: {exc}")
    # cgroup v2 mounted at the root (unified hierarchy)
    if (root / "cgroup.controllers").is_file() and "" in own:
        base = root / own[""].lstrip("/")
        try:
            delegated = set((base / "cgroup.subtree_control").read_text(encoding="ascii").split())
        except OSError:
            delegated = set()
        if {"memory", "pids"} <= delegated and _writable_dir(base):
            return CgroupSupport("cgroup2", f"cgroup v2 under {base}", {"": base})
        return CgroupSupport(
            None,
            f"cgroup v2 at {base} does not delegate memory and pids to child groups "
            f"(subtree_control: {' '.join(sorted(delegated)) or 'empty'})",
        )
    bases: dict[str, Path] = {}
    missing: list[str] = []
    for controller in V1_CONTROLLERS:
        mount = root / controller
        if controller not in own or not (mount / "cgroup.procs").is_file():
            missing.append(controller)
            continue
        base = mount / own[controller].lstrip("/")
        if _writable_dir(base):
            bases[controller] = base
        else:
            missing.append(controller)
    if "pids" in bases and "memory" in bases:
        extra = f" (no {', '.join(missing)})" if missing else ""
        return CgroupSupport("cgroup1", f"cgroup v1 {', '.join(sorted(bases))}{extra}", bases)
    return CgroupSupport(None, f"no writable cgroup hierarchy for {', '.join(missing) or 'pids, memory'}")


def _host_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_groups(support: CgroupSupport) -> int:
    """Kill what is left in, and remove, the groups of hosts that are gone; return how many were removed.

    A host killed with SIGKILL cannot remove its runners' groups, and without bubblewrap a setsid daemon of
    its model may still sit in one: both are ended here, the next time any host creates a group.
    """
    by_name: dict[str, list[Path]] = {}
    for base in support.bases.values():
        with contextlib.suppress(OSError):
            for path in base.glob("medigan-iso-*"):
                by_name.setdefault(path.name, []).append(path)
    removed = 0
    for name, dirs in by_name.items():
        owner = name.split("-")[2] if name.count("-") >= 3 else ""
        if not owner.isdigit() or int(owner) == os.getpid() or _host_alive(int(owner)):
            continue
        group_dirs = {controller: base / name for controller, base in support.bases.items()}
        group = RunnerCgroup(support.mechanism or "", group_dirs, NO_LIMITS)
        group.kill(wait_s=1.0)
        group.remove()
        removed += not any(path.exists() for path in dirs)
    return removed


def _write(path: Path, value: str) -> None:
    path.write_text(value, encoding="ascii")


@dataclass
class RunnerCgroup:
    """One runner's group (one directory per hierarchy). Build it with :meth:`create`."""

    mechanism: str
    dirs: dict[str, Path]  # controller ("" for v2) -> the group's directory
    limits: CgroupLimits

    @classmethod
    def create(cls, support: CgroupSupport, limits: CgroupLimits, *, label: str = "runner") -> RunnerCgroup:
        """Create the group and write its limits; raises OSError when the host refuses.

        Groups left by hosts that died without closing (SIGKILL, os._exit) are cleaned up first.
        """
        if support.mechanism is None:
            raise OSError(f"no cgroup support: {support.detail}")
        remove_stale_groups(support)
        name = f"medigan-iso-{os.getpid()}-{next(_COUNTER)}-{label}"[:100]
        group = cls(support.mechanism, {}, limits)
        try:
            for controller, base in support.bases.items():
                path = base / name
                path.mkdir()
                group.dirs[controller] = path
            group._apply()
        except BaseException:
            group.remove()
            raise
        return group

    def _apply(self) -> None:
        lim = self.limits
        if self.mechanism == "cgroup2":
            d = self.dirs[""]
            if lim.pids is not None:
                _write(d / "pids.max", str(lim.pids))
            if lim.memory_bytes is not None:
                _write(d / "memory.max", str(lim.memory_bytes))
                with contextlib.suppress(OSError):
                    _write(d / "memory.swap.max", "0")
            if lim.cpus is not None and (d / "cpu.max").exists():
                _write(d / "cpu.max", f"{max(1000, int(lim.cpus * CPU_PERIOD_US))} {CPU_PERIOD_US}")
            return
        if lim.pids is not None:
            _write(self.dirs["pids"] / "pids.max", str(lim.pids))
        if lim.memory_bytes is not None:
            _write(self.dirs["memory"] / "memory.limit_in_bytes", str(lim.memory_bytes))
            # without this, swap lets a group use more than its memory limit
            with contextlib.suppress(OSError):
                _write(self.dirs["memory"] / "memory.memsw.limit_in_bytes", str(lim.memory_bytes))
        if lim.cpus is not None and "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(max(1000, int(lim.cpus * CPU_PERIOD_US))))

    def join_prefix(self) -> list[str]:
        """argv to put before a command so that it runs inside the group from its first instruction.

        ``/bin/sh`` writes its own pid into every ``cgroup.procs`` and then ``exec``\\ s the command: nothing
        of the model (nor bubblewrap) runs before the move, so no child can be forked outside the group.
        """
        script = " && ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))}" for d in self.dirs.values())
        return ["/bin/sh", "-c", f'{script} && exec "$@"', "medigan-iso-cgroup"]

    def pids(self) -> list[int]:
        d = self.dirs.get("") or self.dirs.get("pids") or next(iter(self.dirs.values()))
        try:
            return [int(x) for x in (d / "cgroup.procs").read_text(encoding="ascii").split()]
        except (OSError, ValueError):
            return []

    def memory_events(self) -> dict[str, int]:
        """Counters showing the memory limit was hit: ``oom_kill`` (v2; v1 kernels >= 4.13), ``failcnt``."""
        out: dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            if self.mechanism == "cgroup2":
                text = (self.dirs[""] / "memory.events").read_text(encoding="ascii")
            else:
                text = (self.dirs["memory"] / "memory.oom_control").read_text(encoding="ascii")
                out["failcnt"] = int(
                    (self.dirs["memory"] / "memory.failcnt").read_text(encoding="ascii").strip()
                )
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if value.strip().isdigit():
                    out[key] = int(value)
        return out

    def oom_killed(self) -> bool:
        return self.memory_events().get("oom_kill", 0) > 0

    def pids_refused(self) -> int:
        """How many forks ``pids.max`` refused so far (the ``max`` counter of ``pids.events``)."""
        d = self.dirs.get("") or self.dirs.get("pids")
        if d is None:
            return 0
        with contextlib.suppress(OSError, ValueError):
            for line in (d / "pids.events").read_text(encoding="ascii").splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        return 0

    def kill(self, *, wait_s: float = KILL_WAIT_S) -> None:
        """SIGKILL every process in the group (setsid daemons included) and wait until it is empty."""
        if self.mechanism == "cgroup2" and (self.dirs[""] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.dirs[""] / "cgroup.kill", "1")
        deadline = time.monotonic() + wait_s
        while True:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def remove(self) -> None:
        """Remove the group's directories (after :meth:`kill`); a group still in use stays."""
        for path in self.dirs.values():
            with contextlib.suppress(OSError):
                path.rmdir()
