"""A wheel install (not editable) has the packaged recipes and the bundled model.

The package is installed with ``pip install .`` into a fresh virtual environment that sees the
already installed dependencies through a ``.pth`` file (no network, nothing downloaded); the
commands then run from a folder outside the source tree, so only the wheel's files can answer.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args, cwd, env, timeout=300):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_wheel_install_runs_the_packaged_recipes_and_the_demo(tmp_path):
    # the sources a build reads, copied: the build leaves build/ and *.egg-info beside them
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "owlkit", src / "owlkit", ignore=shutil.ignore_patterns("__pycache__"))

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, dict(os.environ))
    assert made.returncode == 0, made.stderr
    python, owl = venv / "bin" / "python", venv / "bin" / "owl"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        tmp_path, env).stdout.strip())
    # lines of a .pth only add folders: the .pth files inside them (the editable owlkit) are not read
    ours = {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}
    (purelib / "_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    found = _run([str(python), "-c", "import setuptools, pip, torch, transformers"], tmp_path, env)
    assert found.returncode == 0, found.stderr[-2000:]

    installed = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                      "--disable-pip-version-check", "--quiet", str(src)], tmp_path, env)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-3000:]
    where = _run([str(python), "-c", "import owlkit; print(owlkit.__file__)"], tmp_path, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    printed = _run([str(owl), "train", "owl2_stage2", "--print-recipe"], tmp_path, env)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert "stage: owl2_stage2" in printed.stdout and "init: runs/owl2_stage1/final" in printed.stdout
    as_module = _run([str(python), "-m", "owlkit.training", "smoke", "--print-recipe"], tmp_path, env)
    assert as_module.returncode == 0 and "preset: test-owl2" in as_module.stdout, as_module.stderr[-2000:]
    unknown = _run([str(owl), "train", "owl3_stage9"], tmp_path, env)
    assert unknown.returncode == 2 and "owl2_stage2" in unknown.stderr and len(unknown.stderr.splitlines()) == 1

    demo = _run([str(owl), "demo"], tmp_path, env)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "model: " in demo.stdout and "  -> " in demo.stdout, demo.stdout[-2000:]
