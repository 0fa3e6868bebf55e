"""The host code and the tests run on Python 3.9 (issue 18): no 3.10+ construct that only fails at run time.

ruff (target py39) and the parser catch syntax (match, parenthesised context managers); what they let
through is evaluated at run time: ``X | Y`` on types outside annotations (isinstance, aliases; with
``from __future__ import annotations`` annotations themselves are fine), ``zip(strict=)``, and
``dataclass(slots=, kw_only=)``. The tox env py39 runs a subset; this check covers every file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOST_FILES = sorted(
    p
    for p in [*(REPO / "medigan_iso").rglob("*.py"), *(REPO / "tests").glob("*.py")]
    if "data" not in p.relative_to(REPO).parts[1:2]
)
TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "list", "tuple", "dict", "set", "None", "type"}


def _is_type_union(node: ast.AST) -> bool:
    """``A | B`` where each side is a builtin type name, a capitalised name, a subscript or such a union."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)):
        return False

    def typeish(side: ast.AST) -> bool:
        if isinstance(side, ast.Name):
            return side.id in TYPE_NAMES or side.id[:1].isupper()
        if isinstance(side, ast.Constant):
            return side.value is None
        return isinstance(side, ast.Subscript) or _is_type_union(side)

    return typeish(node.left) and typeish(node.right)


def offences(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename, feature_version=(3, 9))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            keywords = {k.arg for k in node.keywords}
            if func in ("isinstance", "issubclass") and len(node.args) == 2 and _is_type_union(node.args[1]):
                found.append(f"{filename}:{node.lineno}: {func}(..., X | Y) (use a tuple)")
            if func == "zip" and "strict" in keywords:
                found.append(f"{filename}:{node.lineno}: zip(strict=) (tests: _compat.zip_strict)")
            if func == "dataclass" and keywords & {"slots", "kw_only"}:
                found.append(f"{filename}:{node.lineno}: dataclass(slots=/kw_only=)")
        elif isinstance(node, ast.Assign) and _is_type_union(node.value):
            found.append(f"{filename}:{node.lineno}: a type alias X | Y (use typing.Union)")
        elif isinstance(node, ast.Match):  # pragma: no cover - the 3.9 parser above rejects it first
            found.append(f"{filename}:{node.lineno}: match")
    return found


def test_the_checker_finds_each_construct() -> None:
    bad = (
        "isinstance(v, int | float)\nzip(a, b, strict=True)\n"
        "@dataclass(slots=True)\nclass A: pass\nAlias = Foo | None\n"
    )
    assert len(offences(bad, "bad.py")) == 4
    good = "isinstance(v, (int, float))\nflags = a | b\nx: int | None = None\nAlias = Union[Foo, None]\n"
    assert offences(good, "good.py") == []
    with pytest.raises(SyntaxError):
        offences("match x:\n    case 1:\n        pass\n", "m.py")


def test_host_code_and_tests_have_no_python_3_10_runtime_construct() -> None:
    found = []
    for path in HOST_FILES:
        found += offences(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert found == [], "\n".join(found)
