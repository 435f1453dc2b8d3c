"""Imports run down the layers: a module below never imports one above it, not even inside a function."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A lower module or package, and the packages above it that it must not import.
BELOW = {"ringtrain/results.py": ("ringtrain.plan", "ringtrain.train", "ringtrain.bench"),
         "ringtrain/rates.py": ("ringtrain.plan", "ringtrain.results"),
         "ringtrain/trace": ("ringtrain.fault", "ringtrain.train", "ringtrain.plan", "ringtrain.bench")}


def imported(path: str) -> set:
    """Every module ``path`` imports, anywhere in it, relative imports resolved."""
    package = os.path.relpath(os.path.dirname(path), ROOT).split(os.sep)
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
    return names


def files(where: str) -> list:
    path = os.path.join(ROOT, where)
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".py"))


@pytest.mark.parametrize("where", sorted(BELOW))
def test_no_import_runs_upward(where):
    upward = sorted(f"{os.path.relpath(path, ROOT)} imports {name}" for path in files(where)
                    for name in imported(path) if name.startswith(BELOW[where]))
    assert not upward, upward


def test_the_rate_parser_keeps_its_public_names():
    from ringtrain import plan, rates
    from ringtrain.plan import costmodel
    assert plan.parse_rate is costmodel.parse_rate is rates.parse_rate
    assert rates.parse_rate("100mbit") == 1e8
