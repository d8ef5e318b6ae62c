"""The scorers behind the published numbers: one line per reference, recorded in
``results.json`` beside every metric that reproduces it (``docs/evaluation.md`` has the table
and what each script does). ``owl eval --lenient`` keeps the same formulas with owlkit's
forgiving answer parsing; those numbers carry ``_lenient`` names."""

from __future__ import annotations

__all__ = ["VQA_EVAL", "VIZWIZ_EVAL", "GQA_EVAL", "SCIENCEQA_EVAL", "SEED_EVAL", "VLMEVALKIT_MATCHING",
           "MME_EVAL", "POPE_EVAL", "COCO_EVAL", "MMMU_EVAL", "LOGLIK_LETTER", "LENIENT_SUFFIX"]

LENIENT_SUFFIX = "_lenient"

VQA_EVAL = "X-PLUG/mPLUG-Owl mPLUG-Owl2/mplug_owl2/evaluate/vqa_eval.py @ 14144f34 (VQA API vqaEval.py)"
VIZWIZ_EVAL = ("VizWiz VQA evaluation API (vizwiz.org) vqaEval.py: evaluate() and "
               "evaluate_unanswerability()")
GQA_EVAL = ("haotian-liu/LLaVA scripts/convert_gqa_for_eval.py (v1.5) + GQA eval.py: "
            "prediction.rstrip('.').lower() == answer")
SCIENCEQA_EVAL = "haotian-liu/LLaVA llava/eval/eval_science_qa.py (v1.5 release)"
SEED_EVAL = "haotian-liu/LLaVA scripts/convert_seed_for_submission.py (v1.5): text == answer"
VLMEVALKIT_MATCHING = ("open-compass/VLMEvalKit vlmeval/utils/matching_util.py @ 18fc37a5 (can_infer, "
                       "exact matching without a judge model) + CircularEval")
MME_EVAL = "X-PLUG/mPLUG-Owl mPLUG-Owl2/mplug_owl2/evaluate/evaluate_mme.py @ 14144f34 (MME calculation.py)"
POPE_EVAL = "RUCAIBox/POPE evaluate.py (as LLaVA llava/eval/eval_pope.py)"
COCO_EVAL = "salaniz/pycocoevalcap 1.2 (tylin/coco-caption): PTBTokenizer, Bleu, Meteor, Rouge, Cider"
MMMU_EVAL = "X-PLUG/mPLUG-Owl mPLUG-Owl2/mplug_owl2/evaluate/evaluate_mmmu.py @ 14144f34"
LOGLIK_LETTER = "log-likelihood of each option letter (lm-evaluation-harness style), exact letter"
