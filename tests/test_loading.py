"""Loading big checkpoints: one tensor at a time, in a dtype that fits, where it is asked.

The 7B-shaped measurements are in benchmarks/full_size.py; here the same code runs on models
small enough for the test suite: the `small` preset (67 M parameters, fp16 shards like the
official release) for memory, the test presets for the rules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import make_model_folder
from owlkit.checkpoints import load_model, save_model
from owlkit.cli import main as owl
from owlkit.config import OwlConfig
from owlkit.errors import CheckpointError
from owlkit.memory import choose_dtype, needed_bytes
from owlkit.models.owl import OwlForCausalLM
from owlkit.weight_files import read_state_dict

REPO = Path(__file__).resolve().parents[1]

RSS_PROBE = r"""
import gc, json, sys
import torch
import owlkit.models.owl, transformers.models.llama.modeling_llama, safetensors.torch  # imported before the baseline
from owlkit.checkpoints import load_model

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

gc.collect()
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM)
model = load_model(sys.argv[1], dtype=sys.argv[2])
peak = status("VmHWM")
print(json.dumps({"delta": peak - base, "size": sum(p.numel() * p.element_size() for p in model.parameters())}))
"""


@pytest.fixture(scope="module")
def official_fp16(tmp_path_factory):
    """The `small` preset as the release ships: official layout, fp16, two .bin shards + index
    (and the same weights as one safetensors file)."""
    root = tmp_path_factory.mktemp("fp16")
    torch.manual_seed(0)
    model = OwlForCausalLM(OwlConfig.from_preset("small")).half()
    save_model(model, root / "st", format="official")
    state = read_state_dict(root / "st")
    shards = root / "bin"
    shards.mkdir()
    (shards / "config.json").write_text((root / "st" / "config.json").read_text())
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate([names[: len(names) // 2], names[len(names) // 2:]]):
        file = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: state[k].contiguous() for k in part}, shards / file)
        weight_map.update(dict.fromkeys(part, file))
    (shards / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    largest = max(t.numel() * t.element_size() for t in state.values())
    return root, state, largest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")
@pytest.mark.parametrize("layout", ["bin", "st"])
def test_streaming_load_peak_memory(official_fp16, layout):
    """fp16 shards -> bf16 model: the load's peak RSS stays within 1.15x the model's size plus the
    largest tensor (reading whole shards and converting afterwards took 2.08x)."""
    root, _, largest = official_fp16
    done = subprocess.run([sys.executable, "-c", RSS_PROBE, str(root / layout), "bfloat16"], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["delta"] <= 1.15 * got["size"] + largest, got


@pytest.mark.parametrize("layout", ["bin", "st"])
def test_streamed_weights_are_the_files_exactly(official_fp16, layout):
    root, state, _ = official_fp16
    model = load_model(root / layout, dtype="float16")
    from owlkit.checkpoints import official_names

    table = official_names(model.config)
    ours = model.state_dict()
    for name, official in table.items():
        assert torch.equal(ours[name], state[official]), name
    as_bf16 = load_model(root / layout, dtype=torch.bfloat16)
    emb = "language_model.embed_tokens.weight"
    assert torch.equal(as_bf16.state_dict()[emb], state[table[emb]].to(torch.bfloat16))


def test_the_default_dtype_and_refusals_follow_the_memory(tmp_path):
    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=1)
    n = sum(p.numel() for p in load_model(folder).parameters())
    cpu = torch.device("cpu")
    assert load_model(folder).dtype == torch.float32  # plenty of room: float32
    tight = needed_bytes(n, torch.bfloat16) + 1  # bf16 fits, fp32 does not
    assert choose_dtype(n, torch.float16, cpu, None, tight) == torch.bfloat16
    assert load_model(folder, max_memory=tight).dtype == torch.bfloat16
    with pytest.raises(CheckpointError, match=r"needs .* in float32 and this machine has .* available; --dtype bfloat16"):
        load_model(folder, dtype="float32", max_memory=tight)
    with pytest.raises(CheckpointError, match="no dtype fits"):
        load_model(folder, max_memory="100MB")


def test_commands_refuse_what_does_not_fit_in_one_line(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=1)
    (tmp_path / "q.jsonl").write_text('{"id": "a", "question": "hi"}\n')
    capsys.readouterr()
    monkeypatch.setenv("OWLKIT_MAX_MEMORY", "100MB")
    for argv in (["chat", "--model", str(folder), "hi"], ["eval", "synth", "--model", str(folder), "--n-per-task", "1"],
                 ["generate", "--model", str(folder), "--input", str(tmp_path / "q.jsonl"), "--output",
                  str(tmp_path / "a.jsonl")]):
        assert owl(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "no dtype fits" in err, err
    monkeypatch.delenv("OWLKIT_MAX_MEMORY")
    assert owl(["chat", "--model", str(folder), "--dtype", "bfloat16", "--max-new-tokens", "2", "hi"]) == 0
    assert owl(["chat", "--model", str(folder), "--device", "cuda:0" if not torch.cuda.is_available() else "meta", "hi"]) == 2
    assert owl(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "memory to run it" in out and "bfloat16" in out


def test_device_maps_on_a_cpu_machine(tmp_path):
    """The placement logic (the GPU case runs where a GPU is lent: benchmarks/gpu.py)."""
    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=1)
    plain = load_model(folder)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
        for device_map in ("auto", {"": "cpu"}, {"vision": "cpu", "abstractor": "cpu", "language_model": "cpu",
                                                 "lm_head": "cpu"}, "cpu"):
            model = load_model(folder, device_map=device_map)
            assert all(p.device.type == "cpu" for p in model.parameters())
            assert torch.equal(model(input_ids=ids).logits, expected)
    with pytest.raises(CheckpointError, match="places no module holding lm_head"):
        load_model(folder, device_map={"vision": "cpu", "abstractor": "cpu", "language_model": "cpu"})
    with pytest.raises(CheckpointError, match="disk"):
        load_model(folder, device_map={"": "disk"})


def test_convert_stores_the_asked_dtype_and_bad_memory_settings_are_one_line(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "m"
    make_model_folder(folder, "test-owl2", seed=1)
    assert owl(["convert", str(folder), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert {t.dtype for t in read_state_dict(tmp_path / "bf16").values() if t.is_floating_point()} == {torch.bfloat16}
    capsys.readouterr()
    monkeypatch.setenv("OWLKIT_MAX_MEMORY", "lots")
    assert owl(["chat", "--model", str(folder), "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot read 'lots' as a memory size" in err
    monkeypatch.delenv("OWLKIT_MAX_MEMORY")
    assert owl(["serve", "--model", str(folder), "--image-cache-mb", "-1", "--port", "0"]) == 2
    assert "--image-cache-mb" in capsys.readouterr().err
