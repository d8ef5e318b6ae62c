"""Training across processes (gloo on CPU) and across a crash.

* ``owl train --nproc 2`` with DDP (torchrun) and FSDP2 (torch.multiprocessing) gives the losses
  of one process with the same global batch;
* a run killed with SIGKILL at a random step and resumed gives the uninterrupted losses exactly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import with_overrides

REPO = Path(__file__).resolve().parents[1]


def tiny(out, **over) -> dict:
    recipe = {
        "model": {"preset": "test-owl2"},
        "stage": "owl2_stage1",
        # every other micro-batch of two is text-only: the vision side and the visual branches of
        # the modality-adaptive module get no gradient from it on that rank
        "data": {"sources": [{"type": "random", "num_samples": 32, "text_tokens": 10,
                              "images_per_sample": [1, 0, 0, 0]}], "shuffle": False},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "layer_decay": 0.8},
        "train": {"steps": 4, "micro_batch_size": 2, "grad_accum": 2, "threads": 1, "precision": "fp32"},  # exact sums
        "checkpoint": {"every": 2, "keep": 2},
        "log": {"progress": False},
        "output_dir": str(out),
    }
    return with_overrides(recipe, over)


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def _owl(args, **env):
    return subprocess.run([sys.executable, "-m", "owlkit.cli", *args], cwd=REPO, env=_env(**env),
                          capture_output=True, text=True, timeout=240)


def _write(tmp_path, recipe) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("mode, launcher", [("ddp", "torchrun"), ("fsdp2", "spawn")])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, mode, launcher):
    from owlkit.training import train
    from owlkit.training.metrics import read_metrics

    single = train(tiny(tmp_path / "single"))  # 2 x 2 accumulation x 1 process
    recipe = tiny(tmp_path / "multi", train__grad_accum=1, train__distributed=mode)  # 2 x 1 x 2 processes
    done = _owl(["train", str(_write(tmp_path, recipe)), "--nproc", "2", "--launcher", launcher])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = read_metrics(tmp_path / "multi")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for a, b in zip(rows, single.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["samples"] == b["samples"] == 4 and a["supervised_tokens"] == b["supervised_tokens"]
    ckpt = tmp_path / "multi" / "checkpoints" / "step-00000004"
    assert (ckpt / "rng-rank0.pt").exists() and (ckpt / "rng-rank1.pt").exists()
    # the gathered final weights are the single-process ones
    from owlkit import load_model

    a, b = load_model(tmp_path / "multi" / "final").state_dict(), load_model(single.final_dir).state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


#: The recipe's own data read slowly (0.06 s a sample, about 0.25 s a step), so that the kill
#: lands inside the run; the records, and so the losses, are those of ``train(recipe)``.
SLOW_RUN = """
import sys, time

from owlkit.config import OwlConfig
from owlkit.training import BatchSource, build_batch_source, load_recipe, train


class Slow:
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        time.sleep(0.06)
        return self.dataset[i]


recipe = load_recipe(sys.argv[1])
source = build_batch_source(recipe, OwlConfig.from_preset(recipe["model"]["preset"]))
train(recipe, source=BatchSource(Slow(source.dataset), source.collate, source.description))
"""


def test_kill_at_a_random_step_then_resume_gives_the_same_losses(tmp_path):
    from owlkit.training import train
    from owlkit.training.metrics import read_metrics

    steps = 10
    reference = {r["step"]: r["loss"] for r in train(tiny(tmp_path / "ref", train__steps=steps)).history}
    recipe = tiny(tmp_path / "run", train__steps=steps)
    path = _write(tmp_path, recipe)
    kill_at = random.Random().randint(2, steps - 2)
    script = tmp_path / "slow_run.py"
    script.write_text(SLOW_RUN)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    try:
        while time.time() < deadline and proc.poll() is None:
            rows = read_metrics(tmp_path / "run")
            if rows and rows[-1]["step"] >= kill_at:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill at step {kill_at}: {proc.stderr.read()[-2000:]}"
    before = read_metrics(tmp_path / "run")
    assert before and all(r["loss"] == reference[r["step"]] for r in before)  # same run up to the kill
    resumed = train(recipe, resume=True)
    first = resumed.history[0]["step"]
    assert first <= before[-1]["step"] + 1 and (first - 1) % 2 == 0, (kill_at, first)
    for row in resumed.history:
        assert row["loss"] == reference[row["step"]], (kill_at, row["step"])
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == list(range(1, steps + 1))


def test_options_and_overrides_in_any_order(tmp_path):
    """`owl train R --nproc 2 key=value` as docs/training.md writes it (and --print-recipe after)."""
    recipe = _write(tmp_path, tiny(tmp_path / "run"))
    done = _owl(["train", str(recipe), "--nproc", "2", "train.distributed=fsdp2", "--print-recipe", "optim.lr=0.5"])
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["train"]["distributed"] == "fsdp2" and printed["optim"]["lr"] == 0.5


def test_torchrun_input_error_is_one_line(tmp_path):
    """Every process hits the same user error: one line (not one per process, no torchrun
    ChildFailedError traceback), exit code 2."""
    recipe = tiny(tmp_path / "run", train__grad_accum=1, train__distributed="ddp",
                  data__sources=[{"type": "random", "num_samples": 8, "text_token": 4}])
    done = _owl(["train", str(_write(tmp_path, recipe)), "--nproc", "2"])
    assert done.returncode == 2, done.stderr[-3000:]
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "'text_tokens'" in err[0] and err[0].startswith("owl train: error:"), done.stderr[-3000:]


def _limit_file_size(limit: int):
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_failed_checkpoint_write_is_one_line_and_leaves_no_partial_checkpoint(tmp_path):
    """A real write error (files capped at 100 kB, as a full disk would fail them): one line naming
    the last good checkpoint, exit 2, no half-written folder; the run resumes from there."""
    from owlkit.training import train
    from owlkit.training.checkpoint import list_checkpoints

    recipe = tiny(tmp_path / "run", train__steps=2)
    train(recipe)
    path = _write(tmp_path, recipe)
    done = subprocess.run([sys.executable, "-m", "owlkit.cli", "train", str(path), "train.steps=4", "--resume"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240,
                          preexec_fn=_limit_file_size(100_000))
    assert done.returncode == 2, done.stderr[-3000:]
    err = done.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err[-3000:]
    assert "cannot write the checkpoint of step 4" in err and "File too large" in err
    assert "the last good checkpoint is" in err and "step-00000002" in err
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    resumed = train(with_overrides(recipe, {"train__steps": 4}), resume=True)
    assert resumed.history[0]["step"] == 3


def test_an_output_dir_that_cannot_be_written_is_one_line(tmp_path, capsys):
    from owlkit.cli import main as owl

    (tmp_path / "file").write_text("")
    path = _write(tmp_path, tiny(tmp_path / "file" / "run"))
    assert owl(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "output_dir" in err and "cannot be created" in err
