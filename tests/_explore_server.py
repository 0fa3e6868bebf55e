"""A real ``medigan-iso explore`` server for the explorer's tests, and the catalogue it serves.

``explore_world(root)`` writes a catalogue beside the bundled demo models with three fixture packages
(numpy only, sharing demo-numpy's env):

- ``test-crash``: an adversarial model whose ``generate`` writes HTML and terminal escapes (an OSC 52
  clipboard write, a screen clear) to stderr and then kills its runner with ``os._exit(7)``; its catalogue
  title holds a ``<script>`` tag and an ESC;
- ``test-slow``: a model whose ``generate`` sleeps for an hour (the server must keep serving others);
- ``test-cond``: a model that draws a grey level from its ``condition`` keyword (a declared input) and
  refuses to be called with anything it did not declare.

``ExploreServer.start(...)`` runs ``python -m medigan_iso explore --port 0 --no-browser`` as a subprocess
(real uvicorn on 127.0.0.1) and reads the URL it prints.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from _signals import sigint_default

from medigan_iso.packages import tree_sha256

TOKEN = "explore-test-token-0123456789abcdef"
START_TIMEOUT_S = 120.0  # a first start imports starlette and uvicorn on a loaded 2-core machine
HOSTILE_TITLE = "Crashes <script>alert('title')</script> \x1b[31mred"

CRASH_INIT = r"""
import os
import sys


def generate(model_file, num_samples, output_path, save_images, **kwargs):
    sys.stderr.write("<img src=x onerror=alert(1)> \x1b]52;c;cHduZWQ=\x07 \x1b[2J boom\n")
    sys.stderr.flush()
    os._exit(7)
"""

SLOW_INIT = """
import time


def generate(model_file, num_samples, output_path, save_images, **kwargs):
    time.sleep(3600)
    return []
"""

COND_INIT = """
import numpy as np


def generate(model_file, num_samples, output_path, save_images, condition=0, flip=False):
    level = int(condition) * 60 % 256
    out = []
    for i in range(num_samples):
        image = np.full((16, 16), level, dtype=np.uint8)
        image[: 4 + i % 8, :4] = 255
        out.append(image[::-1] if flip else image)
    return out
"""


def _package(root: Path, init: str) -> tuple[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "__init__.py").write_text(textwrap.dedent(init).lstrip(), encoding="utf-8")
    np.save(root / "weights.npy", np.arange(4, dtype=np.float32))
    return root.name, tree_sha256(root)


def _entry(
    link: str, digest: str, *, title: str, fid: object, custom: dict[str, object] | None = None
) -> dict:
    return {
        "execution": {
            "package_name": link.rsplit("/", 1)[-1],
            "package_link": link,
            "package_sha256": digest,
            "model_name": "weights",
            "extension": ".npy",
            "image_size": [16, 16],
            # demo-numpy's requirements and interpreter: the fixtures reuse its env
            "dependencies": ["numpy>=1.21"],
            "python_requires": ">=3.8",
            "dependencies_as_of": "2024-05-31",
            "generate_method": {
                "name": "generate",
                "args": {
                    "base": ["model_file", "num_samples", "output_path", "save_images"],
                    "custom": custom or {},
                },
            },
        },
        "selection": {
            "modality": ["test fixture"],
            "organ": ["none"],
            "type": "fixture",
            "tags": ["explorer"],
            "performance": {"FID": fid, "turing_test": {"AUC": 0.5}},
        },
        "description": {"title": title},
    }


def explore_world(root: Path) -> Path:
    """Write the fixture packages and their catalogue under ``root``; return the catalogue path."""
    models = root / "models"
    catalogue = {
        "test-crash": _entry(
            "models/crash", _package(models / "crash", CRASH_INIT)[1], title=HOSTILE_TITLE, fid="30.5"
        ),
        "test-slow": _entry("models/slow", _package(models / "slow", SLOW_INIT)[1], title="Sleeps", fid=5),
        "test-cond": _entry(
            "models/cond",
            _package(models / "cond", COND_INIT)[1],
            title="Conditional grey squares",
            fid="not measured",  # a non-numeric value: ranking skips it, as medigan_iso's search does
            custom={"condition": 1, "flip": False},
        ),
    }
    path = root / "catalogue.json"
    path.write_text(json.dumps(catalogue), encoding="utf-8")
    return path


@dataclass
class ExploreServer:
    process: subprocess.Popen[str]
    url: str  # http://127.0.0.1:PORT/?token=...
    stdout: list[str] = field(default_factory=list)
    stderr_path: Path | None = None

    @property
    def base(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    @classmethod
    def start(
        cls,
        *,
        home: Path,
        config: Path | None,
        log_dir: Path,
        args: tuple[str, ...] = (),
        token: str = TOKEN,
    ) -> ExploreServer:
        env = dict(os.environ)
        env.update(
            {
                "MEDIGAN_ISO_HOME": str(home),
                "MEDIGAN_ISO_CATALOGUE_URL": "",
                "MEDIGAN_ISO_EXPLORE_TOKEN": token,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.pop("MEDIGAN_ISO_CONFIG", None)
        if config is not None:
            env["MEDIGAN_ISO_CONFIG"] = str(config)
        log_dir.mkdir(parents=True, exist_ok=True)
        stderr_path = log_dir / "explore-server.stderr"
        with stderr_path.open("w", encoding="utf-8") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "medigan_iso", "explore", "--port", "0", "--no-browser", *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                env=env,
                start_new_session=True,
                preexec_fn=sigint_default,
            )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                line = None
            if line is None:
                process.kill()
                process.wait()
                if process.stdout is not None:
                    process.stdout.close()
                raise AssertionError(
                    f"the explorer did not start; stdout {seen!r}; stderr:\n{stderr_path.read_text()}"
                )
            seen.append(line)
            if " at http://" in line:
                url = line.rsplit(" at ", 1)[1].strip()
                return cls(process=process, url=url, stdout=seen, stderr_path=stderr_path)

    def stop(self) -> int:
        """SIGINT (Ctrl-C), as a user stops it; SIGKILL if it does not end. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8") if self.stderr_path else ""
