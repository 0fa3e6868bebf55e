"""``medigan-iso doctor``: what this machine offers medigan_iso (uv, cache sizes, sandbox layers).

Owns the printing of the report only: uv is found by :mod:`medigan_iso.envs`, the sandbox layers are probed
by :mod:`medigan_iso.sandbox`, the cache locations come from :mod:`medigan_iso.paths`. It changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

from medigan_iso.cgroups import machine_memory_bytes
from medigan_iso.envs import uv_version
from medigan_iso.envs.tools import build_confinement
from medigan_iso.errors import SandboxError
from medigan_iso.paths import cache_layout
from medigan_iso.sandbox import (
    LAYERS,
    SANDBOX_ENV,
    Limits,
    effective_limits,
    gpu_devices,
    probe_host,
    protection_gaps,
    resolve_policy,
    runner_user,
)

__all__ = ["register"]

MB = 1_000_000


def register(subparsers: Any) -> None:
    doctor = subparsers.add_parser(
        "doctor", help="uv version, cache sizes and the sandbox layers this machine supports"
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--bwrap", metavar="PATH", help="probe this bubblewrap instead of the one on PATH")
    doctor.set_defaults(handler=_doctor)


def _disk_bytes(root: Path) -> int:
    """Bytes allocated under ``root`` (hardlinked files counted once per walk, symlinks not followed)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _report(args: argparse.Namespace) -> dict[str, Any]:
    uv_path, uv_line = uv_version()
    layout = cache_layout()
    caches = {
        name: {"path": str(path), "bytes": _disk_bytes(path) if path.exists() else 0}
        for name, path in (
            ("catalogues", layout.catalogues),
            ("packages", layout.packages),
            ("envs", layout.envs),
            ("uv_cache", layout.uv_cache),
            ("logs", layout.logs),
        )
    }
    support = probe_host(bwrap=args.bwrap)
    layers: dict[str, Any] = {"hygiene": {"available": True, "detail": "always applied", "remedy": None}}
    for name, layer in support.layers.items():
        layers[name] = {"available": layer.available, "detail": layer.detail, "remedy": layer.remedy}
    available = [name for name in support.layers if support.available(name)]
    limits = effective_limits(Limits())
    policy: str
    try:
        policy = resolve_policy(None).policy
    except ValueError as exc:
        policy = f"invalid: {exc}"
    return {
        "platform": {
            "system": platform.system(),
            "kernel": platform.release(),
            "machine": platform.machine(),
        },
        "uv": {"path": None if uv_path is None else str(uv_path), "version": uv_line},
        "env_builds": _env_builds(),
        "cache_root": str(layout.root),
        "caches": caches,
        "sandbox": {
            "policy": policy,
            "policy_source": SANDBOX_ENV,
            "layers": layers,
            "runner_user": runner_user(support),
            "resource_limits": {
                "mechanism": support.limits_mechanism,
                "cgroup": support.cgroups.mechanism,
                "memory_bytes": limits.memory_bytes,
                "pids": limits.pids,
                "machine_memory_bytes": machine_memory_bytes(),
            },
            # the device nodes a runner of a CUDA env would get (bound exactly, nothing else of /dev)
            "gpus": gpu_devices(),
            # what `auto` leaves open here (with every layer this machine has); `require` refuses these
            "auto_gaps": [
                {"layer": layer, "gap": gap, "remedy": remedy}
                for layer, gap, remedy in protection_gaps(support, available)
            ],
        },
    }


def _env_builds() -> dict[str, Any]:
    """Whether uv and sdist build backends run confined here (see README "What runs where")."""
    try:
        confinement = build_confinement()
    except SandboxError as exc:
        return {"confined": False, "detail": f"refused: {exc.message}"}
    return {"confined": confinement.bwrap is not None, "detail": confinement.detail}


def _doctor(args: argparse.Namespace) -> int:
    report = _report(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    uv = report["uv"]
    print(f"uv: {uv['version'] or 'not usable'} ({uv['path'] or 'not found'})")
    builds = report["env_builds"]
    print(f"env builds: {'confined' if builds['confined'] else 'NOT confined'} ({builds['detail']})")
    print(f"cache: {report['cache_root']}")
    for name, cache in report["caches"].items():
        print(f"  {name:<11} {cache['bytes'] / MB:10.1f} MB  {cache['path']}")
    sandbox = report["sandbox"]
    print(f"sandbox policy: {sandbox['policy']} (set with ${SANDBOX_ENV}: off | auto | require)")
    for name in LAYERS:
        layer = sandbox["layers"][name]
        mark = "yes" if layer["available"] else "NO "
        print(f"  {mark} {name:<10} {layer['detail']}")
        if layer["remedy"]:
            print(f"      -> {layer['remedy']}")
    res = sandbox["resource_limits"]
    memory = f"{res['memory_bytes'] / 2**30:.1f} GiB" if res["memory_bytes"] else "none"
    print(f"resource limits: {res['mechanism']}; default memory {memory}, {res['pids']} tasks")
    print(f"runners run as: {sandbox['runner_user']}")
    gpus = sandbox["gpus"]
    print(f"GPUs a CUDA runner would see: {', '.join(gpus) if gpus else 'none (no /dev/nvidia*)'}")
    if sandbox["auto_gaps"]:
        print("auto leaves open here (require refuses to run with these):")
        for gap in sandbox["auto_gaps"]:
            print(f"  - {gap['gap']}")
            print(f"      -> {gap['remedy']}")
    else:
        print("auto leaves no known gap open here")
    return 0
