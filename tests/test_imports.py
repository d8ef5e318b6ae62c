"""Imports a reader can see: owlkit's modules import each other at the top of the file.

A function-level import of an owlkit module is allowed only with a comment on its line saying
why (an import cycle, or a heavy import that ``import owlkit`` / ``owl <command> --help`` must
not pay for). Every module imports alone, without cycles, and the command modules stay free of
torch and transformers until their command runs.
"""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "owlkit"

#: Modules whose function-level owlkit imports are still to be moved or explained: empty this
#: set as they are.


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return sorted(names)


def _function_level_imports(source: str):
    """(first line, last line, module) of each import inside a function body."""
    found = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                if isinstance(child, ast.ImportFrom):
                    names = ["." * child.level + (child.module or "")]
                else:
                    names = [alias.name for alias in child.names]
                for name in names:
                    found.append((child.lineno, child.end_lineno, name))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def _comment_lines(source: str) -> set[int]:
    return {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def test_function_level_owlkit_imports_say_why():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        source = path.read_text(encoding="utf-8")
        comments = _comment_lines(source)
        for first, last, module in _function_level_imports(source):
            internal = module.startswith(".") or module.split(".")[0] == "owlkit"
            if internal and not comments.intersection(range(first, last + 1)):
                unexplained.append(f"owlkit/{rel}:{first}: {module}")
    assert not unexplained, (
        "function-level imports of owlkit modules without a comment saying why (move them to the "
        "top of the module, or say: '# cycle: ...', '# heavy: ...'):\n" + "\n".join(unexplained)
    )


_IMPORT_ALL = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "owlkit":
            failed[name] = f"{type(exc).__name__}: {exc}"
        # else: an optional dependency that is not installed here
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


def test_every_module_imports_without_cycles():
    """One fresh interpreter imports every module in sorted order; a cycle shows as an
    ImportError about a partially initialised module."""
    names = [n for n in _modules() if not n.endswith(".__main__")]
    done = subprocess.run([sys.executable, "-c", _IMPORT_ALL, json.dumps(names)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    failed = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{k}: {v}" for k, v in failed.items())


_LIGHT_COMMANDS = """
import importlib, sys
from owlkit.cli import COMMANDS, build_parser
build_parser()
heavy = {}
for name, (module, _) in sorted(COMMANDS.items()):
    importlib.import_module(module).add_arguments(__import__("argparse").ArgumentParser())
    loaded = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    if loaded:
        heavy[name] = loaded
        break
print(heavy)
"""


def test_owl_help_and_command_help_import_no_torch():
    """``owl --help`` and ``owl <command> --help`` import each command module and call its
    ``add_arguments``: neither may import torch or transformers (seconds of start-up)."""
    done = subprocess.run([sys.executable, "-c", _LIGHT_COMMANDS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "{}", f"a command module imports heavy modules at import time: {done.stdout}"
