"""Evaluation: benchmarks, prompts, metrics and reports (no model code here).

A runner does::

    from owlkit.evaluation.benchmarks import BENCHMARKS
    bench = BENCHMARKS["vqav2"]
    samples = bench.reader(path)
    settings = bench.prompt.generation_kwargs
    predictions = {s.id: generate(bench.prompt.build(s), s.images, **settings) for s in samples}
    scores = bench.metric(samples, predictions)

Modules: :mod:`.benchmarks` (one module per benchmark: reader, prompt, metric, submission
writer, registered as one :class:`~owlkit.evaluation.benchmarks.Benchmark`), :mod:`.samples`
(:class:`EvalSample`), :mod:`.readers` (what the readers share), :mod:`.prompts` (prompt
templates and generation settings), the shared scorers :mod:`.vqa` (VQA accuracy, EvalAI
processor, GQA), :mod:`.captioning` (BLEU, CIDEr-D, ROUGE-L as pycocoevalcap), :mod:`.choice`
(option extraction, MMBench CircularEval), :mod:`.yesno` (MME, POPE), :mod:`.open_answers`
(MMMU's answer matching), :mod:`.report` (JSON/Markdown results, comparison chart),
:mod:`.runner` (``owl eval``) and :mod:`.lmms_eval_model` (owlkit as an lmms-eval model).
Nothing here imports torch or transformers except the runner and the lmms-eval model.
"""

from __future__ import annotations

from owlkit.evaluation.benchmarks import BENCHMARKS, Benchmark, read_task, score
from owlkit.evaluation.samples import EvalSample

__all__ = ["EvalSample", "Benchmark", "BENCHMARKS", "read_task", "score"]
