"""OK-VQA: distributed in the VQA v2 format, read, prompted and scored as VQA v2
(:mod:`.vqav2`); no submission file (the annotations are public)."""

from __future__ import annotations

from owlkit.evaluation.benchmarks import Benchmark
from owlkit.evaluation.benchmarks.vqav2 import VQA_PROMPT, read_vqa
from owlkit.evaluation.references import VQA_EVAL
from owlkit.evaluation.vqa import vqa_accuracy

__all__ = ["BENCHMARK"]

BENCHMARK = Benchmark(
    "okvqa", read_vqa, VQA_PROMPT, metric=vqa_accuracy, reference=VQA_EVAL, options={"images": "images", "annotations": "annotations"},
    order=20, layout="the OK-VQA folder (questions JSON, annotations JSON, val2014/) or an mPLUG-Owl2 .jsonl")
