"""The package layers of docs/architecture.md, checked on every module's imports (function-level ones too).

A module may import its own package, the layers below it and packages of its own layer; never a layer
above. Within the stage layer stages may use each other (fine-tuning runs the Trainer), but no stage
imports ``serve`` or ``pipeline``. The checker reads source with ``ast`` and never imports it, so a
lazy ``import`` inside a function counts exactly like one at the top.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "scratchllm"

# Lowest first; a package may import packages of its own rank or lower. Top-level modules
# (errors.py, io.py, ...) are named by their module name. ``cli`` is the dispatcher: it reaches the
# stages' command modules by name at run time (importlib), never by an import statement, and the stages
# import its shared argument helper, so it sits in the plumbing.
LAYERS: dict[str, tuple[str, ...]] = {
    "plumbing": ("__init__", "__main__", "errors", "io", "config", "client", "stage", "cli"),
    "corpus": ("corpus",),
    "core": ("tokenizer", "model"),
    "shared": ("infer", "tasks"),
    "stages": ("data", "train", "finetune", "align", "eval", "inspect"),
    "top": ("serve", "pipeline"),
}
RANK = {pkg: rank for rank, pkgs in enumerate(LAYERS.values()) for pkg in pkgs}
LAYER_OF = {pkg: layer for layer, pkgs in LAYERS.items() for pkg in pkgs}


def _package(module: str) -> str:
    """``scratchllm.corpus.shards`` -> ``data``; ``scratchllm.io`` -> ``io``; ``scratchllm`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every ``scratchllm`` import in the file, at any depth."""
    me = _module_name(path, root).split(".")
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me if is_package else me[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if node.module is None:  # ``from . import x``: x may be a module
                out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, module))
    return [(line, m) for line, m in out if m == root.name or m.startswith(root.name + ".")]


def violations(root: Path) -> list[str]:
    """Every import in the package at ``root`` that goes against LAYERS, as readable lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source_pkg = _package(_module_name(path, root))
        if source_pkg not in RANK:
            unplaced = f"package {source_pkg!r} is in no layer (add it to LAYERS)"
            if not any(unplaced in f for f in found):
                found.append(f"{path.relative_to(root.parent)}: {unplaced}")
            continue
        for line, module in imported_modules(path, root):
            target_pkg = _package(module)
            if target_pkg == source_pkg:
                continue
            where = f"{path.relative_to(root.parent)}:{line}"
            if target_pkg not in RANK:
                found.append(f"{where}: imports {module}, whose package {target_pkg!r} is in no layer")
            elif RANK[target_pkg] > RANK[source_pkg]:
                found.append(f"{where}: {LAYER_OF[source_pkg]} package {source_pkg!r} imports {module} "
                             f"from the higher {LAYER_OF[target_pkg]} layer")
    return found


def test_no_module_imports_a_higher_layer():
    assert SRC.is_dir()
    problems = violations(SRC)
    assert not problems, "imports against the layers (docs/architecture.md):\n" + "\n".join(problems)


def test_every_package_is_in_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in SRC.glob("*.py")}
    assert packages | modules <= set(RANK), sorted((packages | modules) - set(RANK))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "scratchllm"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for d in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()
    return root


CLEAN = {
    "io.py": "from scratchllm.errors import ScratchError\n",
    "tokenizer/bpe.py": "from scratchllm.io import atomic_write_text\nfrom scratchllm.corpus import ingest\n",
    "data/prepare.py": "from scratchllm.tokenizer import bpe\nfrom scratchllm.train import loop\n",
    "serve/server.py": "from scratchllm.eval import lm\n",
    "pipeline/stages.py": "from scratchllm.serve import server\n",
}


@pytest.mark.parametrize(("name", "text", "expect"), [
    # the core importing a stage, even lazily inside a function
    ("tokenizer/cli.py", "def f():\n    from scratchllm.data.ingest import read_files\n", "core package 'tokenizer'"),
    ("model/hf.py", "import scratchllm.finetune.lora\n", "imports scratchllm.finetune.lora"),
    ("infer/engine.py", "from scratchllm.train import loop\n", "higher stages layer"),
    # a stage importing the top
    ("eval/lm.py", "from scratchllm.serve.server import create_app\n", "stages package 'eval'"),
    ("data/mix.py", "def g():\n    import scratchllm.pipeline.runner\n", "higher top layer"),
    # plumbing and the low packages importing anything above them; relative imports resolve too
    ("io.py", "from scratchllm.tokenizer.chat import END\n", "plumbing package 'io'"),
    ("corpus/shards.py", "from scratchllm.data import dedup\n", "corpus package 'corpus'"),
    ("tasks/specs.py", "from ..eval import runner\n", "imports scratchllm.eval from"),
    ("client.py", "from . import serve\n", "imports scratchllm.serve"),
    ("newpkg/x.py", "import os\n", "package 'newpkg' is in no layer"),
])
def test_checker_catches_a_planted_violation(tmp_path, name, text, expect):
    assert violations(_tree(tmp_path, CLEAN)) == []  # the clean tree passes, so the finding is the plant's
    root = _tree(tmp_path / "planted", {**CLEAN, name: text})
    problems = violations(root)
    assert len(problems) == 1 and expect in problems[0], problems
