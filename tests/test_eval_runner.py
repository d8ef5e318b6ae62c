"""`owl eval`: every task end to end on a small fixture in the benchmark's real layout, with a
tiny model; exact official prompt ids; resuming; `owl eval compare`; bad input."""

from __future__ import annotations

import json

import pytest
import torch

import eval_layouts as layouts
from helpers import make_model_folder
from owlkit.cli import main as owl
from owlkit.errors import InputError
from owlkit.evaluation.benchmarks import BENCHMARKS, build_prompt
from owlkit.evaluation.benchmarks.owleval import dialogue_prompt, read_owleval
from owlkit.evaluation.benchmarks.vqav2 import read_vqa
from owlkit.evaluation.runner import (_encode, evaluate, exact_prompt_ids, generate_exact, option_logprobs,
                                      v1_prompt)
from owlkit.generation import Engine
from owlkit.inference import Owl
from owlkit.processing.templates import V1_SYSTEM
from owlkit.processing.tokenizer import encode_prompt

OFFICIAL_VQA = ("USER: <|image|>How many dogs? Answer the question using a single word or phrase. "
                "ASSISTANT: ")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "model"
    make_model_folder(path, "test-owl2", seed=5)
    return path


@pytest.fixture(scope="module")
def owl_api(folder):
    return Owl.load(folder)


@pytest.fixture
def calls(owl_api):
    """Counts the model's forward passes (generation steps and scoring passes)."""
    seen: list[int] = []
    handle = owl_api.model.register_forward_pre_hook(lambda module, args: seen.append(1))
    yield seen
    handle.remove()


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ----------------------------------------------------------------------------- prompts and ids


def test_exact_prompt_ids_are_the_official_string(owl_api, tmp_path, monkeypatch):
    proc = owl_api.processor
    samples = read_vqa(layouts.vqa_layout(tmp_path / "vqav2"))
    prompt = build_prompt("vqav2", samples[0])
    assert prompt == OFFICIAL_VQA
    ids = exact_prompt_ids(owl_api, prompt)
    assert ids == encode_prompt(OFFICIAL_VQA, 2, proc.tokenizer, proc.image_token_id)
    assert proc.tokenizer.id_to_token(ids[-1]) == "▁"          # the trailing space is kept
    chat_ids, _ = proc.encode([{"role": "user", "content": [{"type": "image", "image": None},
                                                            {"type": "text", "text": "How many dogs? Answer the "
                                                             "question using a single word or phrase."}]}],
                              images=[samples[0].image])
    assert chat_ids == ids[:-1]                                 # the template has no trailing space

    seen = {}
    real_embed, real_run = owl_api.model.embed_multimodal, Engine.run

    def spy_embed(input_ids, pixel_values, attention_mask, **kw):  # the engine's prefill
        seen.update(ids=input_ids.clone(), mask=attention_mask.clone(), pixels=pixel_values)
        return real_embed(input_ids, pixel_values, attention_mask, **kw)

    def spy_run(engine, jobs):
        seen.update(jobs=list(jobs), lockstep=engine.lockstep)
        return real_run(engine, seen["jobs"])

    monkeypatch.setattr(owl_api.model, "embed_multimodal", spy_embed)
    monkeypatch.setattr(Engine, "run", spy_run)
    prompts = [prompt, build_prompt("vqav2", samples[1])]
    batch = generate_exact(owl_api, prompts, [s.images for s in samples], max_new_tokens=4)
    for row, mask, p in zip(seen["ids"], seen["mask"], prompts):
        assert row[mask.bool()].tolist() == encode_prompt(p, 2, proc.tokenizer, proc.image_token_id)
        assert mask[-1] == 1                                    # left padding
    assert seen["pixels"].shape[0] == 2 and seen["lockstep"] and not any(j.sampling for j in seen["jobs"])
    assert all(j.min_new_tokens == 1 and j.max_new_tokens == 4 for j in seen["jobs"])
    monkeypatch.undo()
    singles = [generate_exact(owl_api, [p], [s.images], max_new_tokens=4)[0] for p, s in zip(prompts, samples)]
    assert batch == singles


def test_v1_prompt_conversion():
    assert v1_prompt(OFFICIAL_VQA) == (V1_SYSTEM + "\nHuman: <image>\nHuman: How many dogs? Answer the question "
                                       "using a single word or phrase.\nAI: ")
    turns = [("Read it.", "A sign"), ("And then?", None)]
    assert v1_prompt(dialogue_prompt(turns, 2)) == dialogue_prompt(turns, 1).replace("<|image|>", "<image>")
    assert v1_prompt("USER: What is 2+2?\nA. 3\nB. 4 ASSISTANT: ").endswith("\nHuman: What is 2+2?\nA. 3\nB. 4\nAI: ")
    with pytest.raises(InputError, match="not an mPLUG-Owl2 prompt"):
        v1_prompt("Human: hi\nAI: ")


def test_v1_model_runs_the_converted_prompt(owl_api, tmp_path):
    make_model_folder(tmp_path / "owl1", "test-owl1", seed=2)
    owl1 = Owl.load(tmp_path / "owl1")
    proc = owl1.processor
    assert exact_prompt_ids(owl1, OFFICIAL_VQA) == encode_prompt(
        v1_prompt(OFFICIAL_VQA), 1, proc.tokenizer, proc.image_token_id)
    data = layouts.vqa_layout(tmp_path / "vqav2")
    res = evaluate("vqav2", owl1, data, tmp_path / "run", max_new_tokens=2, progress=False)
    assert 0 <= res["metrics"]["overall"] <= 100 and res["generated"] == 2
    rows = _rows(tmp_path / "run" / "vqav2_predictions.jsonl")
    assert v1_prompt(OFFICIAL_VQA) in [r["prompt"] for r in rows]       # the prompt the model saw
    with pytest.raises(InputError, match="made with another prompt"):   # a v2 model cannot reuse them
        evaluate("vqav2", owl_api, data, tmp_path / "run", max_new_tokens=2, progress=False)


def test_option_logprobs_equal_a_plain_forward(owl_api):
    prompt = "USER: what is the shape\nA. circle\nB. square\nAnswer with the letter. ASSISTANT: "
    options = [[" the", " what", " is"], [" A", " red"]]           # one token each / several tokens
    got = option_logprobs(owl_api, [prompt, prompt], options, batch_size=2)
    context = prompt[:-1]
    ctx = _encode(owl_api, context)
    for opts, scores in zip(options, got):
        for opt, value in zip(opts, scores):
            ids = _encode(owl_api, context + opt)
            with torch.no_grad():
                logp = torch.log_softmax(owl_api.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            start = next(i for i, (a, b) in enumerate(zip(ctx + [None], ids)) if a != b)
            want = sum(float(logp[p - 1, ids[p]]) for p in range(start, len(ids)))
            assert value == pytest.approx(want, abs=1e-4)


# ----------------------------------------------------------------------------- every task


def _expect(task):
    pct = (0.0, 100.0)
    if task in ("vqav2", "okvqa", "textvqa", "vizwiz", "mmmu"):
        return {"overall": pct}
    if task in ("gqa", "scienceqa", "seedbench", "mmlu"):
        return {"accuracy": pct}
    if task == "mmbench":
        return {"circular_accuracy": pct, "vanilla_accuracy": pct, "groups": (2, 2)}
    if task == "mme":
        return {"perception": (0, 2000), "cognition": (0, 800), "total": (0, 2800)}
    if task == "pope":
        return {k: (0.0, 1.0) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
    if task in ("coco", "flickr30k", "nocaps"):
        return {k: (0.0, 10.0) for k in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")}
    if task == "mmvet":                                                        # no metric offline
        return {"n": (2, 2)}
    return {"n": (3, 3), "mean_answer_words": (0, 1000)}                       # owleval


SUBMISSIONS = {"vqav2": ["vqav2_submission.json"], "vizwiz": ["vizwiz_submission.json"],
               "mmmu": ["mmmu_submission.json"], "mmvet": ["mmvet_submission.json"],
               "mme": ["mme_results/existence.txt", "mme_results/artwork.txt"],
               "owleval": ["owleval_answers.jsonl", "owleval.html"]}


@pytest.mark.parametrize("task", list(BENCHMARKS))
def test_every_task_end_to_end(task, folder, tmp_path, capsys):
    data = layouts.LAYOUTS[task](tmp_path / "data")
    run = tmp_path / "run"
    args = ["eval", task, "--model", str(folder), "--data", str(data), "--output", str(run),
            "--limit", "4", "--batch-size", "2", "--max-new-tokens", "3"]
    assert owl(args) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert f"## {task}" in out
    assert f"{task}: 100%" in err                                         # the progress bar
    entry = json.loads((run / "results.json").read_text())["tasks"][task]
    for key, (lo, hi) in _expect(task).items():
        assert lo <= entry["metrics"][key] <= hi, (key, entry["metrics"])
    rows = _rows(run / f"{task}_predictions.jsonl")
    assert len({str(r["id"]) for r in rows}) == len(rows) == entry["info"]["samples"] > 0
    assert all(isinstance(r["prediction"], str) for r in rows)
    assert entry["info"]["model"] == "model" and (run / "results.md").read_text().count(f"## {task}") == 1
    for name in SUBMISSIONS.get(task, []):
        assert (run / name).is_file(), name
    if task not in ("owleval", "mmvet"):       # every number names the scorer it reproduces
        assert entry["provenance"][next(iter(_expect(task)))]["lenient"] is False
        assert all(p["reference"] for p in entry["provenance"].values())
    if task == "mmbench":       # CircularEval: 2 and 3 options -> 5 rotations
        assert sorted(r["id"] for r in rows) == [0, 1, 1_000_000, 1_000_001, 2_000_001]
        assert any((run / f"mmbench_submission.{ext}").is_file() for ext in ("xlsx", "tsv"))
        rotated = next(r for r in rows if r["id"] == 1_000_001)["prompt"]
        assert "A. Rome\nB. Oslo\nC. Paris\n" in rotated
    if task == "mmlu":
        assert all(r["prediction"] == max(r["logprobs"], key=r["logprobs"].get) for r in rows)
    if task == "mmvet":
        assert "mmvet: no score: MM-Vet is graded by a GPT-4 judge" in err
        assert entry["info"]["scored"] == BENCHMARKS["mmvet"].no_metric and "provenance" not in entry
        assert sorted(json.loads((run / "mmvet_submission.json").read_text())) == ["v1_0", "v1_1"]
    if task == "vqav2":
        sub = json.loads((run / "vqav2_submission.json").read_text())
        assert sorted(r["question_id"] for r in sub) == [70, 420]
    if task in ("mme", "pope", "vqav2"):
        assert all(r["prompt"].endswith("ASSISTANT: ") for r in rows)


def test_lenient_metrics_have_their_own_names(folder, tmp_path, capsys):
    data = layouts.LAYOUTS["scienceqa"](tmp_path / "data")
    args = ["eval", "scienceqa", "--model", str(folder), "--data", str(data), "--output", str(tmp_path / "run"),
            "--max-new-tokens", "2", "--quiet"]
    assert owl(args) == 0 and owl(args + ["--lenient"]) == 0, capsys.readouterr().err
    entry = json.loads((tmp_path / "run" / "results.json").read_text())["tasks"]["scienceqa"]
    assert "accuracy_lenient" in entry["metrics"] and "accuracy" not in entry["metrics"]
    assert entry["provenance"]["accuracy_lenient"] == {"reference": BENCHMARKS["scienceqa"].reference, "lenient": True}
    capsys.readouterr()
    assert "--java applies to the caption tasks only" in _bad(args + ["--java"], capsys)


def test_test_split_writes_the_submission_only(owl_api, tmp_path):
    root = layouts.vqa_layout(tmp_path / "vqav2")
    questions = root / "v2_OpenEnded_mscoco_val2014_questions.json"           # no annotations: test-dev
    res = evaluate("vqav2", owl_api, questions, tmp_path / "run", max_new_tokens=2, progress=False)
    assert res["metrics"] == {"n": 2}
    entry = json.loads((tmp_path / "run" / "results.json").read_text())["tasks"]["vqav2"]
    assert "no reference answers" in entry["info"]["scored"]
    sub = json.loads((tmp_path / "run" / "vqav2_submission.json").read_text())
    assert sorted(r["question_id"] for r in sub) == [70, 420] and all(isinstance(r["answer"], str) for r in sub)


# ----------------------------------------------------------------------------- resuming


@pytest.mark.parametrize("task", ["okvqa", "mmlu", "owleval"])
def test_resume_skips_done_samples(task, owl_api, tmp_path, calls):
    data = layouts.LAYOUTS[task](tmp_path / "data")
    run = tmp_path / "run"
    kw = dict(batch_size=2, max_new_tokens=3, progress=False)
    first = evaluate(task, owl_api, data, run, **kw)
    preds = run / f"{task}_predictions.jsonl"
    before = preds.read_bytes()
    assert first["generated"] == 3 and calls
    calls.clear()
    again = evaluate(task, owl_api, data, run, **kw)
    assert calls == [] and again["generated"] == 0 and again["reused"] == 3
    assert preds.read_bytes() == before and again["metrics"] == first["metrics"]
    # an interrupted run: the last row half written -> dropped, and only that sample redone
    lines = before.decode().splitlines(keepends=True)
    preds.write_text("".join(lines[:-1]) + lines[-1][:15], encoding="utf-8")
    third = evaluate(task, owl_api, data, run, **kw)
    assert third["generated"] == 1 and calls
    assert sorted(str(r["id"]) for r in _rows(preds)) == sorted(str(json.loads(x)["id"]) for x in lines)
    assert third["metrics"] == first["metrics"]


def test_resume_refuses_answers_to_another_prompt(owl_api, tmp_path):
    data = layouts.pope_layout(tmp_path / "pope")
    evaluate("pope", owl_api, data, tmp_path / "run", max_new_tokens=2, progress=False)
    preds = tmp_path / "run" / "pope_predictions.jsonl"
    rows = _rows(preds)
    rows[0]["prompt"] = "USER: something else ASSISTANT: "
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match="made with another prompt"):
        evaluate("pope", owl_api, data, tmp_path / "run", max_new_tokens=2, progress=False)


# ----------------------------------------------------------------------------- OwlEval


def test_owleval_dialogue_uses_own_answers(owl_api, tmp_path):
    data = layouts.owleval_layout(tmp_path / "owleval")
    evaluate("owleval", owl_api, data, tmp_path / "run", max_new_tokens=4, model_id="tiny", progress=False)
    rows = {r["id"]: r for r in _rows(tmp_path / "run" / "owleval_predictions.jsonl")}
    a2 = rows[2]["prediction"]
    assert rows[3]["turn"] == 1 and rows[3]["dialogue"] == 2
    assert rows[3]["prompt"] == dialogue_prompt([("Read it.", a2), ("And then?", None)], 2)
    turn2 = [{"role": "user", "content": [{"type": "image", "image": str(data / "cases" / "2.jpg")},
                                          {"type": "text", "text": "Read it."}]},
             {"role": "assistant", "content": a2}, {"role": "user", "content": "And then?"}]
    assert rows[3]["prediction"] == owl_api.chat(turn2, max_new_tokens=4)
    answers = _rows(tmp_path / "run" / "owleval_answers.jsonl")
    assert answers[2] == {"image": "2.jpg", "question_id": 3, "question": "And then?",
                          "answer": rows[3]["prediction"], "model_id": "tiny"}
    page = (tmp_path / "run" / "owleval.html").read_text()
    assert "<th>tiny</th>" in page and "<th>llava-13b</th>" in page and "llava 3" in page
    assert 'rowspan="2"' in page and "owleval/cases/2.jpg" in page


def test_owleval_real_data(owleval_dir, folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert owl(["eval", "owleval", "--model", str(folder), "--data", str(owleval_dir), "--output", str(run),
                "--limit", "3", "--max-new-tokens", "3", "--model-id", "tiny", "--quiet"]) == 0
    dialogues = {}
    for s in read_owleval(owleval_dir):
        dialogues.setdefault(s.metadata["dialogue"], []).append(s.id)
    wanted = [i for d in list(dialogues.values())[:3] for i in d]
    answers = _rows(run / "owleval_answers.jsonl")
    assert [a["question_id"] for a in answers] == wanted
    assert set(answers[0]) == {"image", "question_id", "question", "answer", "model_id"}
    page = (run / "owleval.html").read_text()
    assert page.count("<th>") == 2 + 1 + 6                     # image, question, ours, six published systems
    assert "cases/1.jpg" in page
    assert "| n | 3 |" in capsys.readouterr().out


# ----------------------------------------------------------------------------- compare


def test_compare_writes_a_chart(folder, tmp_path, capsys):
    data = layouts.pope_layout(tmp_path / "pope")
    for name, mode in (("resize", "resize"), ("pad", "pad")):
        assert owl(["eval", "pope", "--model", str(folder), "--data", str(data), "--output", str(tmp_path / name),
                    "--image-mode", mode, "--max-new-tokens", "2", "--quiet"]) == 0
    assert json.loads((tmp_path / "pad" / "results.json").read_text())["tasks"]["pope"]["info"]["image_mode"] == "pad"
    capsys.readouterr()
    png = tmp_path / "chart.png"
    assert owl(["eval", "compare", str(tmp_path / "resize"), str(tmp_path / "pad"), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "| task | metric | resize | pad |" in out and "| pope | accuracy |" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- bad input


def _bad(args, capsys) -> str:
    assert owl(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_input_is_one_line_and_exit_2(folder, tmp_path, capsys):
    model = ["--model", str(tmp_path / "no-model")]            # data errors come before the model is loaded
    out = ["--output", str(tmp_path / "run")]
    err = _bad(["eval", "nope", "--data", "x"] + model + out, capsys)
    assert "unknown task 'nope'" in err and "vqav2" in err and "owleval" in err
    # a missing image
    vqa = layouts.vqa_layout(tmp_path / "vqav2", image_ids=(42,))
    err = _bad(["eval", "vqav2", "--data", str(vqa)] + model + out, capsys)
    assert "questions.json: questions[1]" in err and "COCO_val2014_000000000007.jpg" in err
    # a malformed row
    mmlu = layouts.mmlu_layout(tmp_path / "mmlu")
    (mmlu / "test" / "virology_test.csv").write_text("q,a,b,c,d,A\nq,a,b,c,E\n")
    err = _bad(["eval", "mmlu", "--data", str(mmlu)] + model + out, capsys)
    assert "virology_test.csv:2: malformed row" in err
    owleval = layouts.owleval_layout(tmp_path / "owleval")
    (owleval / "questions.jsonl").write_text('{"image": "1.jpg", "question_id": 1, "question": "Q"}\n{"image": \n')
    err = _bad(["eval", "owleval", "--data", str(owleval)] + model + out, capsys)
    assert "questions.jsonl:2: invalid JSON line" in err
    # a folder in the wrong layout
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _bad(["eval", "mme", "--data", str(empty)] + model + out, capsys)
    assert "expected MME_Benchmark_release_version/" in err
    err = _bad(["eval", "vqav2", "--data", str(layouts.mme_layout(tmp_path / "mme"))] + model + out, capsys)
    assert "no questions JSON found; expected a folder with" in err
    err = _bad(["eval", "coco", "--data", str(empty)] + model + out, capsys)
    assert "no *.json file found; expected a COCO-style caption JSON" in err
    err = _bad(["eval", "pope", "--data", str(tmp_path / "missing")] + model + out, capsys)
    assert "missing: not found; expected a coco_pope_" in err
    # options
    err = _bad(["eval", "gqa", "--data", str(empty), "--split", "val"] + model + out, capsys)
    assert "--split does not apply to task gqa" in err
    assert "--data is required" in _bad(["eval", "gqa"] + out, capsys)
    assert "--image-mode" in _bad(["eval", "gqa", "--data", str(empty), "--image-mode", "fit"] + out, capsys)
    assert "give the run folders" in _bad(["eval", "compare"], capsys)
    assert "no results.json" in _bad(["eval", "compare", str(empty)], capsys)
    assert "is a folder, not a JSON file" in _bad(["eval", "vqav2", "--data", str(layouts.vqa_layout(tmp_path / "v")),
                                                   "--annotations", str(empty)] + model + out, capsys)
    # a file that is not an image, found while answering
    pope = layouts.pope_layout(tmp_path / "pope")
    (pope / "val2014" / "COCO_val2014_000000310196.jpg").write_bytes(b"not an image")
    err = _bad(["eval", "pope", "--data", str(pope), "--model", str(folder), "--quiet"] + out, capsys)
    assert "COCO_val2014_000000310196.jpg" in err


def test_synth_eval_command(tmp_path, capsys):
    from helpers import make_model_folder

    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=3)
    assert owl(["eval", "synth", "--model", str(folder), "--seed", "5", "--n-per-task", "2", "--max-new-tokens", "4",
                 "--output", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| colour |" in out and "| text |" in out
    import json

    result = json.loads((tmp_path / "run" / "synth_results.json").read_text())
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["n"] == 2 for r in result["tasks"].values())
    assert len(result["examples"]) == 2 * len(result["tasks"])
    assert result["described"] is False

    # the same questions with each image replaced by its caption
    assert owl(["eval", "synth", "--model", str(folder), "--seed", "5", "--n-per-task", "2", "--max-new-tokens", "4",
                "--output", str(tmp_path / "run2"), "--quiet", "--described"]) == 0
    assert "replaced by their scenes' captions" in capsys.readouterr().out
    described = json.loads((tmp_path / "run2" / "synth_results.json").read_text())
    assert described["described"] is True
    assert [e["question"] for e in described["examples"]] == [e["question"] for e in result["examples"]]
    # and only there
    err = _bad(["eval", "pope", "--data", str(tmp_path), "--model", str(folder), "--described"], capsys)
    assert "--described is for 'owl eval synth' only" in err
