"""Loading and converting model folders: formats, round trips and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import fixture_folders
from owlkit.checkpoints import load_model, official_names, save_model
from owlkit.cli import main as owl
from owlkit.config import OwlConfig
from owlkit.errors import CheckpointError
from owlkit.models.owl import OwlForCausalLM
from owlkit.weight_files import read_state_dict

FOLDERS = fixture_folders()


def _random_model(preset="test-owl2", seed=0):
    torch.manual_seed(seed)
    return OwlForCausalLM(OwlConfig.from_preset(preset)).eval()


def _same_params(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("preset", ["test-owl2", "test-owl1"])
def test_owlkit_round_trip_and_auto_classes(tmp_path, preset):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = _random_model(preset)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    _same_params(model, load_model(tmp_path / "m"))
    _same_params(model, OwlForCausalLM.from_pretrained(tmp_path / "m"))
    import owlkit  # noqa: F401  registers the Auto classes on first use

    assert type(AutoConfig.from_pretrained(tmp_path / "m")).__name__ == "OwlConfig"
    _same_params(model, AutoModelForCausalLM.from_pretrained(tmp_path / "m"))


@pytest.mark.parametrize("preset", ["test-owl2", "test-owl1"])
def test_official_export_and_back_is_bit_identical(tmp_path, preset):
    model = _random_model(preset)
    save_model(model, tmp_path / "official", format="official")
    cfg = json.loads((tmp_path / "official" / "config.json").read_text())
    assert cfg["model_type"] == ("mplug_owl2" if preset == "test-owl2" else "mplug-owl")
    back = load_model(tmp_path / "official")
    carried = {k: v for k, v in back.state_dict().items() if k.endswith("_pos_embed")}
    assert bool(carried) == (preset == "test-owl2")  # the exported tables come back as carried buffers
    for name in carried:
        assert name not in model.state_dict()
        setattr(back.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2], None)
    _same_params(model, back)


def test_carried_tables_are_kept_and_used(tmp_path):
    """A checkpoint's own sin-cos tables (last bit as its numpy computed them) are used and saved."""
    from owlkit.checkpoints import carried_names

    model = _random_model("test-owl2", seed=3)
    save_model(model, tmp_path / "official", format="official")
    state = load_file(str(tmp_path / "official" / "model.safetensors"))
    names = carried_names(model.config)
    for official in names.values():  # change the last bit of every entry, as another numpy would
        t = state[official]
        state[official] = (t.view(torch.int32) ^ 1).view(torch.float32)
    save_file(state, str(tmp_path / "official" / "model.safetensors"))
    back = load_model(tmp_path / "official")
    for ours, official in names.items():
        assert torch.equal(back.state_dict()[ours], state[official])
    ids = torch.tensor([[1, 5, -200, 6]])
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        a = back(input_ids=ids, pixel_values=pixels).logits
        for ours in names:  # without the carried tables: the computed ones, slightly different
            setattr(back.get_submodule(ours.rpartition(".")[0]), ours.rpartition(".")[2], None)
        b = back(input_ids=ids, pixel_values=pixels).logits
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=1e-4)
    save_model(load_model(tmp_path / "official"), tmp_path / "ours")
    save_model(load_model(tmp_path / "ours"), tmp_path / "back", format="official")
    again = load_file(str(tmp_path / "back" / "model.safetensors"))
    for official in names.values():
        assert torch.equal(again[official], state[official])


def test_computed_tables_do_not_depend_on_float32_numpy():
    """float64 then one rounding: the correctly rounded table (sin 1 = 0.84147096 in float32)."""
    import math

    import numpy as np

    from owlkit.models.abstractor import sincos_1d

    table = sincos_1d(8, np.arange(3, dtype=np.float64)).astype(np.float32)
    assert table[1, 0] == np.float32(math.sin(1.0)) == np.float32(0.84147096)
    omega = [10000.0 ** (-k / 4) for k in range(4)]
    expected = [[np.float32(f(p * w)) for f in (math.sin, math.cos) for w in omega] for p in range(3)]
    assert (table == np.array(expected, dtype=np.float32)).all()


@pytest.mark.skipif(not FOLDERS, reason="conformance fixtures not found (a 'shared' folder beside the clone)")
@pytest.mark.parametrize("root", FOLDERS, ids=[p.name for p in FOLDERS])
def test_fixture_convert_round_trip_bit_identical(tmp_path, root):
    assert owl(["convert", str(root / "model"), str(tmp_path / "ours")]) == 0
    assert owl(["convert", str(tmp_path / "ours"), str(tmp_path / "back"), "--format", "official"]) == 0
    original = read_state_dict(root / "model")
    again = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert original.keys() == again.keys()
    for k in original:
        assert torch.equal(original[k], again[k]), k
    assert (tmp_path / "back" / "preprocessor_config.json").exists()


@pytest.mark.skipif(not FOLDERS, reason="conformance fixtures not found (a 'shared' folder beside the clone)")
def test_bin_safetensors_and_sharded_agree(tmp_path):
    root = FOLDERS[-1] / "model"
    reference = load_model(root)
    only_bin = tmp_path / "bin"
    only_bin.mkdir()
    for f in ("config.json", "pytorch_model.bin"):
        shutil.copy(root / f, only_bin / f)
    _same_params(reference, load_model(only_bin))
    state = read_state_dict(root)
    names = sorted(state)
    for kind in ("safetensors", "bin"):
        folder = tmp_path / f"sharded_{kind}"
        folder.mkdir()
        shutil.copy(root / "config.json", folder)
        halves = [names[: len(names) // 2], names[len(names) // 2 :]]
        weight_map = {}
        for i, part in enumerate(halves):
            fname = f"model-0000{i + 1}-of-00002.{kind}" if kind == "safetensors" else f"pytorch_model-0000{i + 1}-of-00002.bin"
            chunk = {k: state[k].contiguous() for k in part}
            if kind == "safetensors":
                save_file(chunk, str(folder / fname))
            else:
                torch.save(chunk, folder / fname)
            weight_map.update({k: fname for k in part})
        index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
        (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        _same_params(reference, load_model(folder))


def _saved(tmp_path, preset="test-owl2"):
    model = _random_model(preset)
    save_model(model, tmp_path / "official", format="official")
    return model, tmp_path / "official"


def test_missing_tensor_is_an_error_naming_it(tmp_path):
    _, folder = _saved(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    del state["lm_head.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing 1 tensor.*lm_head.weight"):
        load_model(folder)


def test_unexpected_and_misshaped_tensors(tmp_path):
    _, folder = _saved(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    state["model.extra.weight"] = torch.zeros(2)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected 1 tensor.*model.extra.weight"):
        load_model(folder)
    # A config that does not match the weights: one layer fewer in the decoder.
    del state["model.extra.weight"]
    save_file(state, str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = cfg["intermediate_size"] * 2
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong shape.*mlp"):
        load_model(folder)


def test_truncated_and_corrupt_weight_files(tmp_path):
    _, folder = _saved(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"this is not a zip archive")
    with pytest.raises(CheckpointError, match="weights-only PyTorch checkpoint"):
        load_model(folder)


def test_pickle_with_code_is_refused(tmp_path):
    _, folder = _saved(tmp_path)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({**state, "evil": Evil()}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(folder)


def test_unknown_layouts(tmp_path):
    with pytest.raises(CheckpointError, match="is not a folder"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        load_model(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "owlkit"}) + "{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "empty")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert owl(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not a folder" in err and "Traceback" not in err


def test_official_names_cover_every_parameter():
    for preset in ("test-owl2", "test-owl1"):
        model = _random_model(preset)
        table = official_names(model.config)
        assert set(table) == set(model.state_dict())
        assert len(set(table.values())) == len(table)


def test_auto_classes_after_a_plain_import_owlkit(tmp_path):
    """As README says: `import owlkit`, then transformers' Auto classes load owlkit folders; and
    `import owlkit` alone stays light (no transformers, no torch)."""
    import subprocess
    import sys

    _random_model("test-owl2", seed=4).save_pretrained(tmp_path / "m")
    code = (
        "import sys, owlkit\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForCausalLM, AutoModel\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'm')!r})\n"
        f"c = AutoConfig.from_pretrained({str(tmp_path / 'm')!r})\n"
        f"b = AutoModel.from_pretrained({str(tmp_path / 'm')!r})\n"
        "print(type(m).__name__, c.model_type, type(b).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["OwlForCausalLM", "owlkit", "OwlForCausalLM"]
