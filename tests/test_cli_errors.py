"""Every ``owl`` command, given a bad argument, a missing file or an output it cannot write:
one line on stderr naming the problem, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import json

import pytest

from helpers import make_model_folder
from owlkit.cli import COMMANDS
from owlkit.cli import main as owl


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    model = root / "model"
    make_model_folder(model, "test-owl2", seed=1)
    (root / "file").write_text("a file, not a folder\n")
    (root / "q.jsonl").write_text(json.dumps({"id": "a", "question": "hi"}) + "\n")
    run = root / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3}) + "\n" for s in (1, 2)))
    (root / "recipe.yaml").write_text(
        "model: {preset: test-owl2}\ndata: {sources: [{type: random, num_samples: 4}]}\ntrain: {steps: 1}\n"
        "log: {progress: false}\n")
    return {"root": root, "model": str(model), "missing": str(root / "missing"),
            "unwritable": str(root / "file" / "out"), "q": str(root / "q.jsonl"), "run": str(run),
            "recipe": str(root / "recipe.yaml")}


# (command, kind, argv) with {placeholders} from the paths fixture
CASES = [
    ("chat", "bad", ["chat", "--bogus"]),
    ("chat", "missing", ["chat", "--model", "{missing}", "hi"]),
    ("chat", "missing", ["chat", "--model", "{model}", "--image", "{missing}.png", "hi"]),
    ("convert", "bad", ["convert", "--format", "onnx", "{model}", "{root}/c"]),
    ("convert", "missing", ["convert", "{missing}", "{root}/c"]),
    ("convert", "unwritable", ["convert", "{model}", "{unwritable}"]),
    ("data", "bad", ["data", "check", "--limit", "many", "{q}"]),
    ("data", "missing", ["data", "check", "{missing}.json"]),
    ("demo", "bad", ["demo", "--max-new-tokens", "x"]),
    ("demo", "missing", ["demo", "--model", "{model}", "{missing}.png"]),
    ("eval", "bad", ["eval", "nosuchbench"]),
    ("eval", "missing", ["eval", "vqav2", "--model", "{model}", "--data", "{missing}"]),
    ("eval", "unwritable", ["eval", "synth", "--model", "{model}", "--output", "{unwritable}", "--n-per-task", "1"]),
    ("generate", "bad", ["generate", "--input", "{q}"]),
    ("generate", "missing", ["generate", "--model", "{model}", "--input", "{missing}", "--output", "{root}/a.jsonl"]),
    ("generate", "unwritable", ["generate", "--model", "{model}", "--input", "{q}", "--output", "{unwritable}"]),
    ("info", "bad", ["info"]),
    ("info", "missing", ["info", "{missing}"]),
    ("merge-lora", "bad", ["merge-lora", "{root}"]),
    ("merge-lora", "missing", ["merge-lora", "{missing}", "{root}/m"]),
    ("plot", "bad", ["plot"]),
    ("plot", "missing", ["plot", "{missing}"]),
    ("plot", "unwritable", ["plot", "{run}", "--out", "{unwritable}"]),
    ("quantize", "bad", ["quantize", "{model}", "{root}/q", "--bits", "3"]),
    ("quantize", "missing", ["quantize", "{missing}", "{root}/q", "--bits", "8"]),
    ("quantize", "unwritable", ["quantize", "{model}", "{unwritable}", "--bits", "8"]),
    ("serve", "bad", ["serve", "--port", "http"]),
    ("serve", "missing", ["serve", "--model", "{missing}", "--port", "0"]),
    ("synth", "bad", ["synth", "{root}/w", "--n", "ten"]),
    ("synth", "unwritable", ["synth", "{unwritable}", "--n", "2"]),
    ("small", "bad", ["small", "fly"]),
    ("small", "unwritable", ["small", "build", "--out", "{unwritable}", "--no-install"]),
    ("tiny", "bad", ["tiny", "fly"]),
    ("tiny", "unwritable", ["tiny", "build", "--out", "{unwritable}", "--no-install"]),
    ("train", "bad", ["train", "{recipe}", "--nproc", "two"]),
    ("train", "missing", ["train", "{missing}.yaml"]),
    ("train", "unwritable", ["train", "{recipe}", "output_dir={unwritable}"]),
    ("web", "bad", ["web", "--port", "http"]),
    ("web", "missing", ["web", "--model", "{missing}", "--port", "0"]),
]


def test_every_command_is_covered():
    assert {c for c, _, _ in CASES} == set(COMMANDS)


@pytest.mark.parametrize("command, kind, argv", CASES, ids=[f"{c}-{k}-{i}" for i, (c, k, _) in enumerate(CASES)])
def test_one_line_exit_2_no_traceback(paths, capsys, command, kind, argv):
    args = [a.format(**paths) for a in argv]
    try:
        code = owl(args)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (args, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith(f"owl {command}"), (args, err[-2000:])
    assert "Traceback" not in err
    if kind == "unwritable":
        assert any(w in lines[0] for w in ("Not a directory", "cannot", "is a file")), lines[0]
