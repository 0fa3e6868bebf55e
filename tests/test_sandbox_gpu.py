"""GPUs inside the sandbox (issue 16): exact device binds, Landlock rights, the seccomp filter's verdicts.

No machine here has a GPU, so the bubblewrap argv and the Landlock rules are checked as built for a given
device list, and the seccomp program is run through a small classic-BPF interpreter (the instructions the
filter uses) to show which syscalls and ioctls it allows. Where ``/dev/nvidia0`` exists, a CUDA tensor op
runs in a real runner under ``require``.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest

from medigan_iso.runner_process import runner_environment
from medigan_iso.sandbox import (
    SandboxConfig,
    env_uses_cuda,
    gpu_devices,
    plan_launch,
    probe_host,
    seccomp_program,
)

SUPPORT = probe_host()
DEVICES = ["/dev/nvidia-uvm", "/dev/nvidia0", "/dev/nvidiactl"]

# --- a classic BPF interpreter for the seccomp program --------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
NR = {"socket": 41, "socketpair": 53, "clone": 56, "clone3": 435, "ioctl": 16, "ptrace": 101, "openat": 257}
ALLOW, KILL, ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97


def run_filter(program: bytes, nr: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64) -> int:
    """Evaluate a seccomp BPF program on struct seccomp_data {nr, arch, ip, args[6]} (little-endian)."""
    padded = (list(args) + [0] * 6)[:6]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *padded)
    insns = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x15:  # JEQ K
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x35:  # JGE K
            pc += 1 + (jt if acc >= k else jf)
        elif code == 0x45:  # JSET K
            pc += 1 + (jt if acc & k else jf)
        elif code == 0x06:  # RET K
            return k
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")


PROGRAM = seccomp_program("x86_64")
NO_UNIX = seccomp_program("x86_64", allow_unix_sockets=False)

# NVIDIA's driver ioctls (type 'F' = 0x46, read/write, various sizes) and the UVM ones (plain numbers)
NVIDIA_IOCTLS = (0xC020462A, 0xC030462B, 0xC00C4622, 0xC0B0464A, 0x30000001, 0x00000025)


@pytest.mark.parametrize("request_", NVIDIA_IOCTLS)
def test_the_filter_allows_the_ioctls_cuda_needs(request_: int) -> None:
    assert run_filter(PROGRAM, NR["ioctl"], (3, request_)) == ALLOW
    assert run_filter(NO_UNIX, NR["ioctl"], (3, request_)) == ALLOW


def test_the_filter_refuses_what_it_should_and_kills_a_foreign_arch() -> None:
    assert run_filter(PROGRAM, NR["ptrace"]) == ERRNO | EPERM
    assert run_filter(PROGRAM, NR["clone3"]) == ERRNO | ENOSYS
    assert run_filter(PROGRAM, NR["clone"], (0x10000000,)) == ERRNO | EPERM  # CLONE_NEWUSER
    assert run_filter(PROGRAM, NR["clone"], (0x003D0F00,)) == ALLOW  # a thread
    assert run_filter(PROGRAM, NR["socket"], (2,)) == ERRNO | EAFNOSUPPORT  # AF_INET
    assert run_filter(PROGRAM, NR["socket"], (1,)) == ALLOW  # AF_UNIX inside bubblewrap
    assert run_filter(NO_UNIX, NR["socket"], (1,)) == ERRNO | EAFNOSUPPORT  # AF_UNIX without it
    assert run_filter(NO_UNIX, NR["socketpair"], (1,)) == ALLOW
    assert run_filter(PROGRAM, NR["openat"]) == ALLOW
    assert run_filter(PROGRAM, NR["openat"], arch=0x40000003) == KILL  # i386 ABI
    assert run_filter(PROGRAM, 0x40000000 | NR["openat"]) == ERRNO | EPERM  # x32 ABI


# --- device discovery and the launch plan ---------------------------------------------------------------


def test_gpu_devices_lists_exactly_the_nvidia_nodes(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "null", "nvme0"):
        (tmp_path / name).write_text("")
    (tmp_path / "nvidia-caps").mkdir()
    assert gpu_devices(tmp_path) == sorted(
        str(tmp_path / n) for n in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
    )


def test_env_uses_cuda_looks_for_cuda_builds(tmp_path: Path) -> None:
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    (site / "numpy").mkdir(parents=True)
    python = tmp_path / "env" / "bin" / "python"
    assert not env_uses_cuda(python)
    (site / "nvidia" / "cudnn").mkdir(parents=True)
    assert env_uses_cuda(python)


def _trampoline_config(prefix: tuple[str, ...]) -> dict[str, object]:
    i = prefix.index("-c")
    return json.loads(prefix[i + 2])  # type: ignore[no-any-return]


@pytest.mark.skipif(SUPPORT.bwrap is None, reason="bubblewrap cannot run here")
def test_bwrap_binds_exactly_the_given_gpu_nodes_and_landlock_grants_them() -> None:
    plan = plan_launch(
        SandboxConfig(policy="auto"), python=sys.executable, package_root=None, output_dir=None, gpus=DEVICES
    )
    argv = list(plan.command_prefix)
    binds = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--dev-bind"]
    assert binds == DEVICES
    for device in DEVICES:
        i = argv.index(device)
        assert argv[i - 1] == "--dev-bind" and argv[i + 1] == device
    assert plan.gpus == tuple(DEVICES)
    assert "--ro-bind-try" in argv and "/sys/module/nvidia" in argv
    if "landlock" in plan.layers:
        rules = _trampoline_config(plan.command_prefix)["landlock"]
        assert [r for r in rules if r[1] == "gpu"] == [[d, "gpu"] for d in DEVICES]  # type: ignore[union-attr]
    no_gpu = plan_launch(
        SandboxConfig(policy="auto"), python=sys.executable, package_root=None, output_dir=None, gpus=[]
    )
    assert "--dev-bind" not in no_gpu.command_prefix
    assert not any("nvidia" in arg for arg in no_gpu.command_prefix[:-3])


def test_an_env_without_cuda_gets_no_gpu_even_where_devices_exist() -> None:
    plan = plan_launch(
        SandboxConfig(policy="auto"), python=sys.executable, package_root=None, output_dir=None
    )
    assert plan.gpus == ()


def test_cuda_visible_devices_passes_the_allow_list(tmp_path: Path) -> None:
    env = runner_environment(tmp_path, source={"CUDA_VISIBLE_DEVICES": "1", "AWS_SECRET_ACCESS_KEY": "x"})
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env


@pytest.mark.skipif(not os.path.exists("/dev/nvidia0"), reason="no GPU on this machine (/dev/nvidia0)")
def test_a_cuda_tensor_op_runs_inside_require(tmp_path_factory: pytest.TempPathFactory) -> None:
    from _envs_for_tests import build_runner_env

    from medigan_iso.runner_process import RunnerProcess

    python = build_runner_env(tmp_path_factory.mktemp("env-cuda"), ["torch", "numpy", "msgpack"])
    pkg = tmp_path_factory.mktemp("cuda") / "cudaop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import torch\n"
        "def generate(model_file, num_samples, output_path, save_images, **kw):\n"
        "    x = torch.ones(4, device='cuda') * 2\n"
        "    return [x.cpu().numpy() for _ in range(num_samples)]\n"
    )
    (pkg / "w.npy").write_bytes(b"")
    plan = plan_launch(SandboxConfig(policy="require"), python=python, package_root=pkg, output_dir=None)
    assert plan.gpus
    with RunnerProcess.start(
        python,
        log_path=pkg.parent / "r.log",
        command_prefix=plan.command_prefix,
        env_overrides=plan.env_overrides,
    ) as proc:
        proc.load(pkg, model_file=pkg / "w.npy", package_name="cudaop")
        [batch] = list(proc.generate(1, batch_size=1))
        assert batch[0].tolist() == [2.0, 2.0, 2.0, 2.0]
