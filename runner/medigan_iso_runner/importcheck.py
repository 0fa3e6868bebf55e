"""Import every declared dependency of this env, inside the env.

Run as ``python -I -m medigan_iso_runner.importcheck JSON``.
argv[1] is a JSON list of distribution names. For each, the installed ``*.dist-info`` folder gives the
version and the import names (``top_level.txt``, else the top-level entries of ``RECORD``); each name is
imported. One JSON line goes to stdout: ``[{"distribution", "version", "imports", "ok", "error"}, ...]``.
Reads dist-info folders directly: ``importlib.metadata`` does not exist on Python 3.7.
Runs confined like the runner (the host starts it through the sandbox); imports nothing from medigan_iso.
"""

import importlib
import json
import os
import re
import sys
import traceback

_DIST_INFO = re.compile(r"^(.+?)-([^-]+)\.dist-info$")
# Top-level names that are not the library: test suites, docs and examples some wheels ship by mistake
# (pytorch-lightning 1.2's pl_examples even writes into site-packages when imported).
_SKIP_TOP = re.compile(
    r"^(_+pycache_+|.*\.dist-info|.*\.data|.*\.egg-info|\.\.|bin|tests?|docs?|(.*_)?examples?|benchmarks?)$"
)


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def dist_infos():
    found = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")  # noqa: PTH208
        except OSError:
            continue
        for name in names:
            match = _DIST_INFO.match(name)
            if match:
                found.setdefault(canonical(match.group(1)), (os.path.join(entry, name), match.group(2)))  # noqa: PTH118
    return found


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:  # noqa: PTH123
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def _on_disk(site, name):
    base = os.path.join(site, *name.split("."))  # noqa: PTH118
    if os.path.isdir(base) or os.path.isfile(base + ".py"):  # noqa: PTH112, PTH113
        return True
    folder, stem = os.path.split(base)
    try:
        return any(entry.startswith(stem + ".") for entry in os.listdir(folder))  # noqa: PTH208
    except OSError:
        return False


def import_names(dist_info):
    text = _read(os.path.join(dist_info, "top_level.txt"))  # noqa: PTH118
    names = []
    if text:
        names = [line.strip().replace("/", ".") for line in text.splitlines() if line.strip()]
        names = [n for n in names if not _SKIP_TOP.match(n)]
        # top_level.txt can name what the wheel no longer ships (torch 1.13's caffe2): keep names on disk
        site = os.path.dirname(dist_info)  # noqa: PTH120
        names = [n for n in names if _on_disk(site, n)]
    else:
        record = _read(os.path.join(dist_info, "RECORD")) or ""  # noqa: PTH118
        for line in record.splitlines():
            path = line.split(",", 1)[0]
            top = path.split("/", 1)[0]
            if "/" in path:
                candidate = top
            elif top.endswith(".py"):
                candidate = top[:-3]
            elif re.match(r"^[A-Za-z_]\w*\..*(so|pyd)$", top):
                candidate = top.split(".", 1)[0]
            else:
                continue
            if not _SKIP_TOP.match(candidate) and candidate.isidentifier() and candidate not in names:
                names.append(candidate)
    # private helpers (`_yaml`) are imported by their public package; skip them unless they are all there is
    public = [n for n in names if not n.startswith("_")]
    return public or names


def _error_line(exc):
    lines = traceback.format_exception_only(type(exc), exc)
    return (lines[-1] if lines else repr(exc)).strip()[:500]


def check(distributions):
    installed = dist_infos()
    rows = []
    for dist in distributions:
        row = {"distribution": dist, "version": None, "imports": [], "ok": False, "error": None}
        hit = installed.get(canonical(dist))
        if hit is None:
            row["error"] = "not installed"
            rows.append(row)
            continue
        row["version"] = hit[1]
        names = import_names(hit[0])
        row["imports"] = names
        if not names:
            row["ok"] = True
            row["error"] = "no import names (nothing to import)"
        for name in names:
            try:
                importlib.import_module(name)
            except BaseException as exc:  # a dependency may raise anything, SystemExit included
                row["error"] = f"import {name}: {_error_line(exc)}"
                break
        else:
            row["ok"] = True
        rows.append(row)
    return rows


def main():
    distributions = json.loads(sys.argv[1]) if len(sys.argv) > 1 else []
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # what imports print must not corrupt the JSON line
    rows = check(distributions)
    real_stdout.write(json.dumps(rows) + "\n")
    real_stdout.flush()


if __name__ == "__main__":
    main()
