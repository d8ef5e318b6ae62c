"""owlkit as an lmms-eval model: the request helpers on a tiny model (always), and lmms-eval's
own evaluator running two local tasks the test writes (a generation task and a multiple-choice
task scored by log-likelihood, with images; no download) through the ``lmms_eval.models``
entry point. The second part needs ``pip install 'owlkit[lmms]'`` and is skipped without it."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import textwrap
import tomllib
from pathlib import Path

import pytest
import torch

import eval_layouts as layouts
from helpers import make_model_folder
from owlkit.errors import InputError
from owlkit.evaluation.lmms_eval_model import conversation, continuation_logprob, generation_options
from owlkit.evaluation.runner import option_logprobs
from owlkit.inference import Owl
from owlkit.processing.templates import render
from owlkit.processing.tokenizer import encode_prompt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("lmms") / "model"
    make_model_folder(path, "test-owl2", seed=3)
    return path


@pytest.fixture(scope="module")
def owl_api(folder):
    return Owl.load(folder)


def _image(tmp_path, colour=(200, 30, 30)):
    from PIL import Image

    return Image.open(layouts.img(tmp_path / f"{colour[0]}.png", "PNG", colour, size=(8, 6))).convert("RGB")


# ----------------------------------------------------------------------------- the helpers


def test_conversation_places_the_images(tmp_path):
    im = _image(tmp_path)
    assert conversation("What is it?", [im]) == [{"role": "user", "content": [
        {"type": "image", "image": im}, {"type": "text", "text": "What is it?"}]}]
    assert conversation("Left <image> right <image>?", [[im], im])[0]["content"] == [
        {"type": "text", "text": "Left "}, {"type": "image", "image": im}, {"type": "text", "text": " right "},
        {"type": "image", "image": im}, {"type": "text", "text": "?"}]
    assert conversation("No image.", None)[0]["content"] == [{"type": "text", "text": "No image."}]
    with pytest.raises(InputError, match="videos and audio are not supported"):
        conversation("Watch.", ["clip.mp4"])


def test_generation_options():
    assert generation_options({"until": ["\n\n", ""], "max_new_tokens": 16, "temperature": 0}, 256) == {
        "max_new_tokens": 16, "stop": ["\n\n"]}
    assert generation_options({"until": "Q:", "do_sample": True, "temperature": 0.5, "top_p": 0.9}, 32) == {
        "max_new_tokens": 32, "stop": ["Q:"], "temperature": 0.5, "top_p": 0.9}
    assert generation_options(None, 8) == {"max_new_tokens": 8}
    with pytest.raises(InputError, match="num_beams must be 1, not 3"):
        generation_options({"num_beams": 3}, 8)


def test_continuation_logprob_text_equals_the_runner(owl_api):
    messages = conversation("Which colour is the sky? Answer with a letter.")
    prompt = render(messages, owl_api.processor.template).prompt
    options = [" A", " blue sky"]
    want = option_logprobs(owl_api, [prompt + " "], [options])[0]
    got = [continuation_logprob(owl_api, messages, o) for o in options]
    assert [c.logprob for c in got] == pytest.approx(want, abs=1e-4) and all(c.tokens >= 1 for c in got)
    with pytest.raises(InputError, match="adds no token"):
        continuation_logprob(owl_api, messages, "")


def test_continuation_logprob_with_an_image(owl_api, tmp_path):
    """The number of a plain forward pass, positions counted with the image expanded."""
    messages = conversation("Describe it.", [_image(tmp_path)])
    proc = owl_api.processor
    rendered = render(messages, proc.template)
    ctx = proc.encode(messages)[0]
    cont = " tiny words"
    full = encode_prompt(rendered.prompt + cont, proc.owl_version, proc.tokenizer, proc.image_token_id)
    start = next(i for i, (a, b) in enumerate(zip(ctx + [None], full)) if a != b)
    pixels = proc.image_processor([im for im in rendered.images if im is not None])
    with torch.no_grad():
        logits = owl_api.model(input_ids=torch.tensor([full]), pixel_values=pixels).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    shift = proc.tokens_per_image - 1                      # one image, before the text
    want = sum(float(logp[p - 1 + shift, full[p]]) for p in range(start, len(full)))
    greedy = all(int(logits[p - 1 + shift].argmax()) == full[p] for p in range(start, len(full)))
    value, is_greedy, tokens = continuation_logprob(owl_api, messages, cont)
    assert value == pytest.approx(want, abs=1e-4) and value < 0 and is_greedy == greedy
    assert tokens == len(full) - start


# ----------------------------------------------------------------------------- lmms-eval itself


def _register_entry_point(tmp_path, monkeypatch):
    """The ``lmms_eval.models`` entry point of pyproject.toml, visible to importlib.metadata
    (an installed owlkit already has it; a source checkout gets it from a dist-info written here)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    assert declared == {"owlkit": "owlkit.evaluation.lmms_eval_model:manifest"}
    found = importlib.metadata.entry_points(group="lmms_eval.models")
    if not any(ep.name == "owlkit" and ep.value == declared["owlkit"] for ep in found):
        info = tmp_path / "site" / "owlkit_entry_point-0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: owlkit-entry-point\nVersion: 0\n")
        (info / "entry_points.txt").write_text(
            "[lmms_eval.models]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        importlib.invalidate_caches()


_UTILS = '''
from PIL import Image


def owl_toy_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def owl_toy_rounds(doc, previous_output=None, round_idx=None, previous_round_info=None,
                   lmms_eval_specific_kwargs=None):
    if round_idx is None:
        return doc["question"]
    outputs = list(previous_output or [])
    return [], "And now?", round_idx >= 2, outputs, None


def owl_toy_rounds_result(doc, results):
    return {"rounds": float(len(results[0]) == 2)}
'''

_COMMON = """
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function utils.owl_toy_visual
"""

_TASKS = {
    "owl_toy_gen": """
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 3
  until: ["\\n\\n"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
    "owl_toy_choice": """
output_type: multiple_choice
doc_to_text: "{{{{question}}}} Answer:"
doc_to_choice: ["red", "blue"]
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
""",
    "owl_toy_rounds": """
output_type: generate_until_multi_round
doc_to_text: !function utils.owl_toy_rounds
doc_to_target: "answer"
generation_kwargs:
  max_new_tokens: 2
process_results: !function utils.owl_toy_rounds_result
metric_list:
  - metric: rounds
    aggregation: mean
    higher_is_better: true
""",
}


def _write_tasks(root: Path) -> Path:
    rows = [{"question": "Which colour is the image?", "answer": "red", "label": 0,
             "image": str(layouts.img(root / "red.png", "PNG", (220, 20, 20), size=(8, 6)))},
            {"question": "Which colour is the image?", "answer": "blue", "label": 1,
             "image": str(layouts.img(root / "blue.png", "PNG", (20, 20, 220), size=(8, 6)))}]
    data = layouts.jsonl(root / "data.jsonl", rows)
    tasks = root / "tasks" / "owl_toy"
    tasks.mkdir(parents=True)
    (tasks / "utils.py").write_text(textwrap.dedent(_UTILS))
    for name, body in _TASKS.items():
        (tasks / f"{name}.yaml").write_text(f"task: {name}\n" + _COMMON.format(data=data) + body.format())
    return root / "tasks"


def test_lmms_eval_runs_owlkit_on_local_tasks(folder, tmp_path, monkeypatch):
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install 'owlkit[lmms]')")
    pytest.importorskip("datasets", reason="lmms-eval's tasks need the datasets package")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    _register_entry_point(tmp_path, monkeypatch)
    from lmms_eval import evaluator
    from lmms_eval.models import MODEL_REGISTRY_V2, get_model
    from lmms_eval.tasks import TaskManager

    MODEL_REGISTRY_V2.load_entrypoint_manifests(overwrite=True)     # lmms-eval's own discovery
    cls = get_model("owlkit")
    assert cls.__name__ == "OwlLmms" and cls.is_simple
    tasks = _write_tasks(tmp_path / "toy")
    manager = TaskManager("WARNING", include_path=str(tasks), include_defaults=False)
    out = evaluator.simple_evaluate(model="owlkit", model_args=f"pretrained={folder}",
                                    tasks=["owl_toy_gen", "owl_toy_choice", "owl_toy_rounds"],
                                    task_manager=manager, batch_size=2, log_samples=True, bootstrap_iters=0,
                                    verbosity="WARNING")
    results = out["results"]
    assert 0.0 <= results["owl_toy_gen"]["exact_match,none"] <= 1.0
    assert 0.0 <= results["owl_toy_choice"]["acc,none"] <= 1.0
    assert results["owl_toy_rounds"]["rounds,none"] == 1.0              # two rounds answered per doc
    gen = out["samples"]["owl_toy_gen"]
    assert len(gen) == 2 and all(isinstance(s["resps"][0][0], str) for s in gen)
    choice = out["samples"]["owl_toy_choice"]
    lls = [[r[0][0] for r in s["resps"]] for s in choice]            # one loss per option: lmms-eval
    assert all(len(x) == 2 and all(v > 0 for v in x) for x in lls)    # picks the smallest
    assert all(s["acc"] == float(min(range(2), key=lambda j: ll[j]) == s["target"]) for s, ll in zip(choice, lls))
    json.dumps(results)                                                 # plain numbers
