"""benchmarks/visual_lookup.py: can a lookup be read off a model's visual tokens?"""

import json

import pytest

from helpers import load_benchmark
from owlkit.zoo.world import Obj, Scene


@pytest.fixture(scope="module")
def probe():
    return load_benchmark("visual_lookup")


def test_lookups_ask_only_by_an_attribute_unique_in_the_picture(probe):
    v = probe.VOCAB.index
    scene = Scene(objects=[Obj("square", "red", "big", 0, 0), Obj("square", "blue", "small", 1, 1),
                           Obj("star", "red", "big", 2, 2)])
    assert sorted(probe.lookups([scene, Scene(objects=[Obj("star", "red", "big", 0, 0)])])) == sorted([
        (0, v("blue"), v("square")),  # blue is unique; red is not, and neither is square
        (0, v("star"), v("red")),
    ])


def test_probe_reads_tokens_and_patches_and_reports_json(probe, tmp_path):
    out = tmp_path / "lookup.json"
    result = probe.main(["--model", "owl-tiny", "--images", "60", "--epochs", "2", "--threads", "1",
                         "--output", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["settings"]["projector"] == "abstractor"
    assert result["shapes"]["patches"] == [64, 128] and result["shapes"]["tokens"][0] == 17
    for curve in result["curves"].values():
        assert [p["epoch"] for p in curve] == [1, 2] and all(0 <= p["held_out"] <= 1 and p["loss"] > 0 for p in curve)


def test_probe_refuses_too_few_images(probe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(["--model", "owl-tiny", "--images", "3"])
    assert exit_info.value.code == 2 and "--images must be at least 10" in capsys.readouterr().err
