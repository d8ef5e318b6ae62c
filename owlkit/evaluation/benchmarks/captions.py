"""Captioning: COCO (Karpathy test), Flickr30K and NoCaps, which differ only by their data.

One reader for COCO-style caption JSON and Karpathy ``dataset_*.json`` files, the official
caption prompt of mPLUG-Owl2's ``evaluate_caption.py`` (8..60 new tokens, ``length_penalty
0``), and BLEU / ROUGE-L / CIDEr-D (:func:`~owlkit.evaluation.captioning.caption_scores`; with
``--java`` pycocoevalcap's own tokenizer and scorers, METEOR included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import Benchmark
from owlkit.evaluation.captioning import caption_scores
from owlkit.evaluation.coco_java import java_caption_scores
from owlkit.evaluation.prompts import OFFICIAL_SCRIPTS, TaskPrompt
from owlkit.evaluation.readers import ImageFinder, expand, load_json, need
from owlkit.evaluation.references import COCO_EVAL
from owlkit.evaluation.samples import EvalSample

__all__ = ["read_captions", "caption_prompt", "BENCHMARKS"]

_CAP_LAYOUT = ("a COCO-style JSON {\"images\": [{id|image_id, file_name|image}], \"annotations\": "
               "[{image_id, caption}]} or a Karpathy dataset_*.json {\"images\": [{filename, filepath?, "
               "split, sentences: [{raw}]}]}")


def read_captions(path: str | Path, *, images: str | Path | None = None, split: str | None = "test",
                  check_images: bool = True) -> list[EvalSample]:
    """Captioning references. ``answers`` = the reference captions of each image.

    COCO-style files (the Karpathy test JSON mPLUG-Owl2 uses, NoCaps) are read whole;
    Karpathy ``dataset_coco.json`` / ``dataset_flickr30k.json`` files are filtered on
    ``split`` (``None`` = all). Image paths are tried against ``images``, the JSON's folder
    and the current folder (Karpathy: ``<root>/<filepath>/<filename>``)."""
    path = expand(path)
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path}: not a caption file; expected {_CAP_LAYOUT}")
    roots = ([expand(images)] if images else []) + [path.parent, Path.cwd()]
    imgs = ImageFinder(check_images)
    samples = []
    if "annotations" in data:
        refs: dict[Any, list[str]] = {}
        if not isinstance(data["annotations"], list):
            raise InputError(f"{path}: 'annotations' must be a list; expected {_CAP_LAYOUT}")
        for i, ann in enumerate(data["annotations"]):
            need(ann, ("image_id", "caption"), f"{path}: annotations[{i}]", "annotation")
            refs.setdefault(ann["image_id"], []).append(str(ann["caption"]))
        for i, im in enumerate(data["images"]):
            where = f"{path}: images[{i}]"
            if not isinstance(im, dict) or not ({"id", "image_id"} & im.keys()) or not (
                    {"file_name", "image"} & im.keys()):
                raise InputError(f"{where}: malformed image: expected id|image_id and file_name|image")
            iid = im.get("id", im.get("image_id"))
            rel = Path(str(im.get("file_name", im.get("image"))))
            cands = [rel] if rel.is_absolute() else [r / rel for r in roots] + [r / rel.name for r in roots]
            image = imgs.get(cands, where)
            samples.append(EvalSample(id=iid, images=[image], answers=refs.get(iid, []),
                                      metadata={"file_name": rel.name}))
        return samples
    for i, im in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        need(im, ("filename", "sentences"), where, "image")
        if split is not None and im.get("split") != split:
            continue
        sub = Path(str(im.get("filepath", "")))
        cands = [r / sub / str(im["filename"]) for r in roots] + [r / str(im["filename"]) for r in roots]
        image = imgs.get(cands, where)
        try:
            refs_k = [str(s["raw"]) for s in im["sentences"]]
        except (TypeError, KeyError):
            raise InputError(f"{where}: malformed image: sentences must be [{{raw: ...}}]") from None
        iid = im.get("cocoid", im.get("imgid", im["filename"]))
        samples.append(EvalSample(id=iid, images=[image], answers=refs_k,
                                  metadata={"file_name": str(im["filename"]), "split": im.get("split")}))
    return samples


def caption_prompt(source: str) -> TaskPrompt:
    """The official caption prompt; ``source`` names the script it comes from."""
    return TaskPrompt("USER: <|image|>Provide a one-sentence caption for the provided image. ASSISTANT: ",
                      60, 8, length_penalty=0.0, source=OFFICIAL_SCRIPTS + source)


def _captions(name: str, source: str, order: int, layout: str) -> Benchmark:
    return Benchmark(name, read_captions, caption_prompt(source), metric=caption_scores, reference=COCO_EVAL, java=java_caption_scores,
                     options={"images": "images", "split": "split"}, data_file=("*.json",), order=order,
                     layout=layout)


BENCHMARKS = (
    _captions("coco", "evaluate_caption.py (written for flickr)", 110,
              "a COCO-style caption JSON or Karpathy dataset_coco.json (or a folder holding one)"),
    _captions("flickr30k", "evaluate_caption.py", 120,
              "a Flickr30K caption JSON or Karpathy dataset_flickr30k.json (or a folder holding one)"),
    _captions("nocaps", "evaluate_caption.py (written for flickr)", 130,
              "nocaps_val_4500_captions.json (or a folder holding it)"),
)
