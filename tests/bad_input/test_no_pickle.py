"""No first-party code can deserialize executable objects: no pickle, nor its relatives.

The scan reads every .py file of the first-party packages with :mod:`ast`, so a comment or a
docstring that mentions pickle is not a finding, while ``import pickle as p``, ``from joblib
import load``, ``np.load(path, allow_pickle=True)`` or ``torch.load(f)`` are, named file:line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "fog_node", "coordinator", "models", "proto", "evfl", "bench")
# Modules whose import alone is the finding: each can turn bytes into arbitrary objects.
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve",
                     "cloudpickle"}  # fmt: skip
GENERATED = ("_pb2.py", "_pb2_grpc.py")


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in files if not p.name.endswith(GENERATED) and ".venv" not in p.parts]


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for an attribute chain, "" for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


class _Finder(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.aliases: dict[str, str] = {}  # local name -> forbidden module it stands for

    def _module(self, lineno: int, name: str, local: str) -> None:
        root = name.split(".")[0]
        if root in FORBIDDEN_MODULES:
            self.found.append((lineno, f"imports {name}"))
            self.aliases[local] = root

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(node.lineno, alias.name, alias.asname or alias.name.split(".")[0])
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module:
            for alias in node.names:
                self._module(node.lineno, node.module, alias.asname or alias.name)
            if node.module.split(".")[0] == "torch" and any(a.name == "load" for a in node.names):
                self.found.append((node.lineno, "imports torch.load"))
            if node.module.split(".")[0] == "numpy" and any(a.name == "load" for a in node.names):
                self.aliases["load"] = "numpy.load"
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        root = dotted.split(".")[0]
        if dotted and (root in FORBIDDEN_MODULES or root in self.aliases) and "." in dotted:
            self.found.append((node.lineno, f"uses {dotted}"))
        if dotted.endswith("torch.load") or dotted == "torch.load":
            self.found.append((node.lineno, "uses torch.load"))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        for keyword in node.keywords:
            if keyword.arg == "allow_pickle" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                what = ast.unparse(keyword.value)
                self.found.append(
                    (node.lineno, f"{ast.unparse(node.func)}(..., allow_pickle={what})")
                )
        self.generic_visit(node)


def scan(source: str) -> list[tuple[int, str]]:
    finder = _Finder()
    finder.visit(ast.parse(source))
    return sorted(set(finder.found))


def test_no_first_party_module_can_unpickle() -> None:
    files = _sources()
    assert len(files) > 50, "the scan must see the packages"
    findings = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for path in files
        for line, what in scan(path.read_text(encoding="utf-8"))
    ]
    assert not findings, "\n".join(findings)


@pytest.mark.parametrize(
    ("source", "want"),
    [
        ("import pickle\n", [(1, "imports pickle")]),
        ("import pickle as p\nx = p.loads(b'')\n", [(1, "imports pickle"), (2, "uses p.loads")]),
        ("from joblib import load\n", [(1, "imports joblib")]),
        ("import dill, marshal, shelve\n",
         [(1, "imports dill"), (1, "imports marshal"), (1, "imports shelve")]),
        ("import numpy as np\nnp.load('x.npy', allow_pickle=True)\n",
         [(2, "np.load(..., allow_pickle=True)")]),
        ("import numpy as np\nflag = 1\nnp.load('x', allow_pickle=flag)\n",
         [(3, "np.load(..., allow_pickle=flag)")]),
        ("import torch\nm = torch.load('m.pt')\n", [(2, "uses torch.load")]),
        ("from torch import load\n", [(1, "imports torch.load")]),
        ("# import pickle\n'''pickle.loads is forbidden'''\n", []),
        ("import numpy as np\nnp.load('x.npy', allow_pickle=False)\n", []),
    ],
    ids=["import", "alias-use", "joblib", "dill-marshal-shelve", "allow-pickle-true",
         "allow-pickle-variable", "torch-load", "from-torch", "comment-and-docstring",
         "allow-pickle-false"],
)  # fmt: skip
def test_the_scanner_finds_what_it_must_and_ignores_comments(source, want) -> None:
    assert scan(source) == want
