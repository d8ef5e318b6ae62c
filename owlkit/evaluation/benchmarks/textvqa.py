"""TextVQA: the official ``TextVQA_0.5.1_<split>.json`` with ``<image_id>.jpg`` images (or the
mPLUG-Owl2 JSONL, read as VQA v2), the official VQA prompt and VQA accuracy (the official
mPLUG-Owl2 evaluation uses the same ``VQAEval``)."""

from __future__ import annotations

from pathlib import Path

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark
from owlkit.evaluation.benchmarks.vqav2 import VQA_PROMPT, read_vqa
from owlkit.evaluation.readers import ImageFinder, answers_list, expand, file_or_find, first_dir, load_json, need
from owlkit.evaluation.references import VQA_EVAL
from owlkit.evaluation.samples import EvalSample
from owlkit.evaluation.vqa import vqa_accuracy

__all__ = ["read_textvqa", "BENCHMARK"]

_TEXTVQA_LAYOUT = ("TextVQA_0.5.1_<split>.json ({\"data\": [{image_id, question, question_id, "
                   "answers}]}) with images <image_id>.jpg in train_images/ (or images/, test_images/)")


def read_textvqa(path: str | Path, *, images: str | Path | None = None,
                 check_images: bool = True) -> list[EvalSample]:
    """TextVQA: the official JSON (or a folder holding one) plus ``<image_id>.jpg`` images.
    A ``.jsonl`` in the mPLUG-Owl2 layout is read like :func:`read_vqa`."""
    path = expand(path)
    if path.is_file() and path.suffix == ".jsonl":
        return read_vqa(path, images=images, check_images=check_images)
    jfile = file_or_find(path, lambda p: p.suffix == ".json" and "textvqa" in p.name.lower(), "TextVQA JSON",
                         _TEXTVQA_LAYOUT)
    data = load_json(jfile)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise InputError(f"{jfile}: not a TextVQA file; expected {_TEXTVQA_LAYOUT}")
    folder = jfile.parent
    image_dir = expand(images) if images else first_dir(
        [folder / "train_images", folder / "images", folder / "test_images", folder])
    imgs = ImageFinder(check_images)
    samples = []
    for i, rec in enumerate(data["data"]):
        where = f"{jfile}: data[{i}]"
        need(rec, ("image_id", "question", "question_id"), where)
        image = imgs.get([image_dir / f"{rec['image_id']}.jpg"], where)
        meta = {k: rec[k] for k in ("image_id", "set_name", "image_classes") if k in rec}
        samples.append(EvalSample(id=rec["question_id"], images=[image], question=str(rec["question"]),
                                  answers=answers_list(rec.get("answers"), where), metadata=meta))
    return samples


BENCHMARK = Benchmark("textvqa", read_textvqa, VQA_PROMPT, metric=vqa_accuracy, reference=VQA_EVAL, options={"images": "images"},
                      order=30, layout="the TextVQA folder (TextVQA_0.5.1_val.json, train_images/)")
