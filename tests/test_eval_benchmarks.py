"""The benchmark table: every module of owlkit.evaluation.benchmarks registers complete
records, and a module dropped into the package is picked up without touching anything else."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import textwrap

import pytest

from owlkit.errors import InputError
from owlkit.evaluation import benchmarks
from owlkit.evaluation.benchmarks import BENCHMARKS, KINDS, Benchmark, discover, get_benchmark, module_benchmarks
from owlkit.evaluation.prompts import TaskPrompt


def test_every_module_registers_complete_records():
    modules = [m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_")]
    names = []
    for name in modules:
        records = module_benchmarks(importlib.import_module(f"owlkit.evaluation.benchmarks.{name}"))
        assert records, name
        for b in records:
            assert isinstance(b, Benchmark) and b.name and b.layout, name
            assert callable(b.reader) and callable(b.select) and isinstance(b.prompt, TaskPrompt)
            assert b.kind in KINDS and (b.metric is not None or b.kind == "dialogue" or b.no_metric)
            assert b.submission is None or callable(b.submission)
            assert set(b.options) <= {"images", "split", "annotations"}
            names.append(b.name)
    assert sorted(names) == sorted(BENCHMARKS)


def test_the_list_of_owl_eval():
    assert list(BENCHMARKS) == ["vqav2", "okvqa", "textvqa", "vizwiz", "gqa", "scienceqa", "seedbench", "mmbench",
                                "mmmu", "mme", "pope", "mmvet", "coco", "flickr30k", "nocaps", "mmlu", "owleval"]
    with pytest.raises(InputError, match="unknown task 'nope'; choose one of: vqav2, okvqa"):
        get_benchmark("nope")


def test_a_new_module_is_picked_up(tmp_path, monkeypatch):
    (tmp_path / "toybench.py").write_text(textwrap.dedent('''
        from owlkit.evaluation.benchmarks import Benchmark
        from owlkit.evaluation.choice import choice_accuracy
        from owlkit.evaluation.prompts import CHOICE_PROMPT, TaskPrompt


        def read_toy(path, *, images=None):
            return []


        BENCHMARK = Benchmark("toybench", read_toy, TaskPrompt(CHOICE_PROMPT, 5), metric=choice_accuracy,
                              options={"images": "images"}, layout="a toy folder")
    '''))
    monkeypatch.setattr(benchmarks, "__path__", [*benchmarks.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "owlkit.evaluation.benchmarks.toybench", raising=False)
    try:
        table = discover()
    finally:
        sys.modules.pop("owlkit.evaluation.benchmarks.toybench", None)
    assert list(table)[:-1] == list(BENCHMARKS) and table["toybench"].layout == "a toy folder"


def test_a_module_without_a_record_is_refused(tmp_path, monkeypatch):
    (tmp_path / "halfbench.py").write_text("READER = None\n")
    monkeypatch.setattr(benchmarks, "__path__", [*benchmarks.__path__, str(tmp_path)])
    try:
        with pytest.raises(TypeError, match="halfbench defines no Benchmark"):
            discover()
    finally:
        sys.modules.pop("owlkit.evaluation.benchmarks.halfbench", None)
