"""medigan_iso inside a real Jupyter kernel (issue 18): ipykernel driven by jupyter_client, as a notebook is.

In a kernel stdout/stderr are not files and the display is rich: generation, a Session and its repr,
stream, a contact sheet shown inline as a PNG, and a kernel interrupt (Ctrl-C, the notebook's stop button)
during a long request stops the runner and leaves the kernel usable.
"""

from __future__ import annotations

import os
import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

jupyter_client = pytest.importorskip(
    "jupyter_client", reason="jupyter_client is not installed (it is in the dev extra)"
)
pytest.importorskip("ipykernel", reason="ipykernel is not installed (it is in the dev extra)")

from jupyter_client.manager import KernelManager  # noqa: E402


class Kernel:
    def __init__(self, km: KernelManager, kc: Any) -> None:
        self.km = km
        self.kc = kc

    def run(self, code: str, *, timeout: float = 600) -> dict[str, Any]:
        """Execute ``code``; its reply status, stdout text, results ({mime: data}) and error name."""
        msg_id = self.kc.execute(code)
        out: dict[str, Any] = {"stdout": "", "stderr": "", "results": [], "error": None, "status": None}
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no kernel output for {timeout} s running:\n{code}") from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind in ("execute_result", "display_data"):
                out["results"].append(content["data"])
            elif kind == "error":
                out["error"] = content["ename"]
                out["traceback"] = "\n".join(content["traceback"])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        out["status"] = self.reply(msg_id)["status"]
        return out

    def reply(self, msg_id: str) -> dict[str, Any]:
        """The shell reply to ``msg_id`` (replies to earlier requests are skipped)."""
        while True:
            reply = self.kc.get_shell_msg(timeout=120)
            if reply["parent_header"].get("msg_id") == msg_id:
                return dict(reply["content"])

    def ok(self, code: str, *, timeout: float = 600) -> dict[str, Any]:
        out = self.run(code, timeout=timeout)
        assert out["status"] == "ok", out.get("traceback", out)
        return out


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    home = tmp_path_factory.mktemp("nb-home")
    env = {k: v for k, v in os.environ.items() if k != "MEDIGAN_ISO_CONFIG"}
    env.update(MEDIGAN_ISO_HOME=str(home), MEDIGAN_ISO_CATALOGUE_URL="")
    km = KernelManager(kernel_name="python3")
    # this interpreter (the one with medigan_iso installed) as the kernel, not whatever "python3" finds
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    km.start_kernel(env=env, cwd=str(home))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    try:
        yield Kernel(km, kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_generate_session_stream_and_contact_sheet_in_a_kernel(kernel: Kernel) -> None:
    kernel.ok("import os, medigan_iso, numpy as np\nfrom medigan_iso.preview import contact_sheet")
    out = kernel.ok(
        "samples = medigan_iso.generate('demo-numpy', 4, seed=3)\n"
        "print(len(samples), samples[0].shape, samples[0].dtype)"
    )
    assert out["stdout"].startswith("4 (")
    out = kernel.ok("session = medigan_iso.Session()\nsession.generate('demo-numpy', 2, seed=3)\nsession")
    text = out["results"][-1]["text/plain"]
    assert text.startswith("<medigan_iso.Session open; warm runners: demo-numpy (pid ")
    out = kernel.ok(
        "streamed = [b for b in session.stream('demo-numpy', 6, seed=3, batch_size=2)]\n"
        "whole = session.generate('demo-numpy', 6, seed=3, batch_size=2)\n"
        "flat = [s for b in streamed for s in b]\n"
        "print(len(streamed), len(flat), all(np.array_equal(a, b) for a, b in zip(flat, whole)))"
    )
    assert out["stdout"].split() == ["3", "6", "True"]
    out = kernel.ok("contact_sheet(whole)")
    png = out["results"][-1].get("image/png")
    assert png, out["results"]  # displayed inline as an image, base64 in the message
    import base64

    raw = base64.b64decode(png)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    # a long request draws a tqdm.auto progress bar in the page; MEDIGAN_ISO_PROGRESS=0 turns it off
    out = kernel.ok("long = session.generate('demo-numpy', 128, seed=3, batch_size=32)")
    assert "/128 [" in out["stderr"] and "sample/s" in out["stderr"], out
    assert "Warning" not in out["stderr"], out
    out = kernel.ok(
        "os.environ['MEDIGAN_ISO_PROGRESS'] = '0'\n"
        "quiet = session.generate('demo-numpy', 128, seed=3, batch_size=32)\n"
        "del os.environ['MEDIGAN_ISO_PROGRESS']"
    )
    assert out["stderr"] == ""
    out = kernel.ok("session.close()\nsession")
    assert out["results"][-1]["text/plain"].startswith("<medigan_iso.Session closed")


def test_kernel_interrupt_stops_the_runner_and_keeps_the_kernel_usable(kernel: Kernel) -> None:
    kernel.ok(
        "import os, medigan_iso\n"
        "s2 = medigan_iso.Session()\n"
        "s2.generate('demo-numpy', 1, seed=1)\n"
        "import re\n"
        "pid = int(re.search(r'pid (\\d+)', repr(s2)).group(1))  # the runner's host pid\n"
        "print(pid)"
    )
    msg_id = kernel.kc.execute("big = s2.generate('demo-numpy', 2_000_000, seed=1, batch_size=64)")
    # wait until the kernel is busy with the request, then press the notebook's stop button
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=120)
        mine = msg["parent_header"].get("msg_id") == msg_id
        if mine and msg["msg_type"] == "status" and msg["content"]["execution_state"] == "busy":
            break
    time.sleep(3)
    kernel.km.interrupt_kernel()
    error = None
    while True:
        msg = kernel.kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "error":
            error = msg["content"]["ename"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert kernel.reply(msg_id)["status"] == "error"
    assert error == "KeyboardInterrupt"
    out = kernel.ok(
        "import time\n"
        "def gone(p):\n"
        "    try:\n"
        "        os.kill(p, 0)\n"
        "    except ProcessLookupError:\n"
        "        return True\n"
        "    return False\n"
        "deadline = time.monotonic() + 30\n"
        "while not gone(pid) and time.monotonic() < deadline:\n"
        "    time.sleep(0.2)\n"
        "print(gone(pid), 'big' in globals(), repr(s2))"
    )
    # the runner was stopped (not left generating), no partial result was bound, the Session knows it
    assert out["stdout"].split()[:2] == ["True", "False"], out["stdout"]
    assert "warm runners: none" in out["stdout"]
    out = kernel.ok("again = s2.generate('demo-numpy', 2, seed=1)\nprint(len(again))\ns2.close()")
    assert out["stdout"].strip() == "2"  # the kernel and the Session still work (a fresh runner)


def test_no_progress_bar_when_not_interactive(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Here stderr is a pipe (pytest captures it): a long request draws nothing."""
    import medigan_iso

    mp = pytest.MonkeyPatch()
    mp.setenv("MEDIGAN_ISO_HOME", str(tmp_path / "home"))
    mp.setenv("MEDIGAN_ISO_CATALOGUE_URL", "")
    mp.delenv("MEDIGAN_ISO_PROGRESS", raising=False)
    try:
        samples = medigan_iso.generate("demo-numpy", 128, seed=3, batch_size=32)
    finally:
        mp.undo()
    assert len(samples) == 128
    assert "sample/s" not in capfd.readouterr().err


def test_the_torch_dataloader_in_a_kernel(kernel: Kernel) -> None:
    pytest.importorskip("torch", reason="torch is not installed (tox installs torch==2.13.0)")
    out = kernel.ok(
        "import torch\n"
        "from medigan_iso.torch import synthetic_dataset\n"
        "ds = synthetic_dataset('demo-numpy', 8, seed=3, chunk_size=4)\n"
        "batches = list(torch.utils.data.DataLoader(ds, batch_size=4))\n"
        "first = batches[0]['sample']  # medigan's item: a dict, collated by the DataLoader\n"
        "print(len(batches), type(first).__name__, tuple(first.shape)[0])"
    )
    assert out["stdout"].split() == ["2", "Tensor", "4"], out
