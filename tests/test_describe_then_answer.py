"""benchmarks/describe_then_answer.py: answers through a model's own caption."""

import pytest

from helpers import load_benchmark
from owlkit.zoo.world import Obj, Scene, answer_question, caption


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("describe_then_answer")


def test_a_caption_parses_back_into_its_scene(bench):
    scene = Scene(objects=[Obj("square", "red", "big", 0, 0), Obj("star", "blue", "small", 1, 1),
                           Obj("circle", "orange", "small", 2, 2)], word="CAKE")
    parsed = bench.scene_from_caption(caption(scene))
    assert parsed.objects == scene.objects and parsed.word == "CAKE"
    assert answer_question("What colour is the star?", [parsed]) == "blue"
    assert bench.scene_from_caption("an empty picture.").objects == []
    # a cell named twice keeps its first object; garbled phrases are skipped
    twice = bench.scene_from_caption("a big red square at the top, a small blue star at the top and a big green blob.")
    assert twice.objects == [Obj("square", "red", "big", 0, 1)]


def test_benchmark_reports_both_routes(bench, tmp_path):
    out = tmp_path / "d.json"
    result = bench.main(["--model", "owl-tiny", "--n-per-task", "2", "--tasks", "colour", "read",
                         "--batch-size", "4", "--output", str(out)])
    assert set(result["tasks"]) == {"colour", "read"} and out.exists()
    for r in result["tasks"].values():
        assert r["n"] == 2 and 0 <= r["through_caption"] <= 1 and 0 <= r["direct"] <= 1
    with pytest.raises(SystemExit):
        bench.main(["--tasks", "compare"])
