"""The pure-Python PTB tokenizer against the Java one pycocoevalcap runs (Stanford CoreNLP 3.4.1).

The fixed cases below were produced by that Java tokenizer; the comparison on a few hundred
generated captions runs it live where a Java runtime and pycocoevalcap are installed.
"""

from __future__ import annotations

import itertools
import shutil

import pytest

from owlkit.evaluation.ptb import PTB_PUNCTUATIONS, coco_tokenize, ptb_tokenize

# (caption, what pycocoevalcap's PTBTokenizer returns): outputs of the Java tokenizer
JAVA_CASES = [
    ("A man walks down Sunset Blvd. with his dog.", "a man walks down sunset blvd. with his dog"),
    ("A bus on Fifth Ave. in New York.", "a bus on fifth ave. in new york"),
    ("They're gonna eat pizza.", "they 're gon na eat pizza"),
    ("I can't believe it's not butter.", "i ca n't believe it 's not butter"),
    ("I'd like a cup of tea, wouldn't you?", "i 'd like a cup of tea would n't you"),
    ("A woman brushing her teeth.He smiles.", "a woman brushing her teeth.he smiles"),
    ("The price is $3.50 for 2.5 lbs.", "the price is $ 3.50 for 2.5 lbs"),
    ("A black-and-white photo of a 3-year-old boy.", "a black-and-white photo of a 3-year-old boy"),
    ("He said \"hello\" to the 'dog'.", "he said hello to the dog"),
    ("Mr. Smith and Dr. Jones at St. Mary's.", "mr. smith and dr. jones at st. mary 's"),
    ("A cat... sleeping on the couch", "a cat sleeping on the couch"),
    ("The U.S. flag waves at 5 p.m.", "the u.s. flag waves at 5 p.m."),
    ("A dog (black) on a mat [red] {blue}", "a dog -lrb- black -rrb- on a mat -lsb- red -rsb- -lcb- blue -rcb-"),
    ("It is 10:30 and 1,000 people are here.", "it is 10:30 and 1,000 people are here"),
    ("The Co. is on Main St.", "the co. is on main st."),
    ("Cannot stop y'all gotta see this", "can not stop y' all got ta see this"),
    ("This costs 50% more & it's #1.", "this costs 50 % more & it 's # 1"),
    ("An e-mail at john@example.com from www.example.com", "an e-mail at john@example.com from www.example.com"),
    ("Gonna GOTTA Wanna lemme gimme cannot Cannot", "gon na got ta wan na lem me gim me can not can not"),
    ("It'sa trap and 'tis the season 'twas night", "it sa trap and 't is the season 't was night"),
    ("a sign for plan b. today", "a sign for plan b. today"),
    ("a bus no. 5 on Rd. 7 at Ave. 9", "a bus no. 5 on rd. 7 at ave. 9"),
    ("prof. x and gen. y and col. z and sen. w", "prof. x and gen. y and col. z and sen. w"),
    ("rock 'n' roll music", "rock 'n' roll music"),
    ("a woman holding a ph.d. diploma", "a woman holding a ph.d. diploma"),
    ("jan. feb. mon. fri. sat. sun.", "jan. feb. mon. fri. sat sun"),
    ("the dog isn't happy.but the cat is", "the dog is n't happy.but the cat is"),
    ("a 20-something man with a 6'2\" frame", "a 20-something man with a 6 2 frame"),
    ("It's 5 o'clock somewhere", "it 's 5 o'clock somewhere"),
]


@pytest.mark.parametrize("caption,expected", JAVA_CASES)
def test_python_tokenizer_matches_recorded_java_output(caption, expected):
    assert coco_tokenize(caption) == expected


def test_ptb_tokens_before_filtering():
    assert ptb_tokenize("Hi, you.") == ["hi", ",", "you", "."]
    assert ptb_tokenize("On Main Ave. today") == ["on", "main", "ave.", "today"]


def varied_captions() -> list[str]:
    """A few hundred captions mixing what the tokenizer has rules for. (CoreNLP reads the last
    line of its input without the lookahead a newline gives: the list ends with a plain caption.)"""
    subjects = ["A man", "The woman", "Two kids", "Mr. Brown", "A 3-year-old girl", "Dr. Lee",
                "A black-and-white dog", "The U.S. team", "Somebody's cat", "Tom & Jerry"]
    verbs = ["is gonna walk", "can't find", "wanna see", "doesn't like", "'d rather eat", "is heading to",
             "gotta catch", "won't leave", "is looking at", "I'm holding"]
    objects = ["the bus on 5th Ave.", "a $2.50 hot-dog", "\"the big apple\"", "a sign (red)", "10,000 balloons",
               "the teeth.He smiled", "a Ph.D. thesis", "Washington D.C.", "the 'old' house", "pizza, fries; soda"]
    endings = ["", ".", "!", "?", "...", " at 3:30 p.m.", " -- really.", " etc.", " on Sunset Blvd.", " :)"]
    out = [e.strip() for e in endings if e.strip()]
    for i, (s, v, o) in enumerate(itertools.product(subjects, verbs, objects)):
        if i % 4 == 0:
            out.append(f"{s} {v} {o}{endings[i // 4 % len(endings)]}")
    return out + [caption for caption, _ in JAVA_CASES] + ["A plain caption"]


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (apt-get install default-jre-headless)")
def test_python_tokenizer_matches_java_on_varied_captions():
    tokenizer = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer",
                                    reason="pycocoevalcap is not installed (pip install pycocoevalcap)")
    captions = varied_captions()
    assert len(captions) >= 200
    java = tokenizer.PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    differ = [(c, java[i][0], coco_tokenize(c)) for i, c in enumerate(captions) if java[i][0] != coco_tokenize(c)]
    assert not differ, differ[:5]


def test_filter_is_pycocoevalcaps():
    assert {".", ",", "''", "``", "-LRB-"} <= PTB_PUNCTUATIONS and "-lrb-" not in PTB_PUNCTUATIONS


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (apt-get install default-jre-headless)")
def test_java_scores_equal_the_python_scores_and_add_meteor():
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed (pip install pycocoevalcap)")
    from owlkit.evaluation.captioning import caption_scores
    from owlkit.evaluation.coco_java import java_caption_scores
    from owlkit.evaluation.samples import EvalSample

    refs = [["A man rides a horse on Main St.", "a person riding a horse"], ["Two dogs play in the snow.", "dogs"],
            ["A woman brushing her teeth.He smiles", "a lady cleans her teeth"]]
    samples = [EvalSample(id=i, images=[], answers=r) for i, r in enumerate(refs)]
    preds = ["a man riding a horse", "two dogs in the snow", "a woman gonna brush teeth"]
    java, python = java_caption_scores(samples, preds), caption_scores(samples, preds)
    for key in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert java[key] == pytest.approx(python[key], abs=1e-12), key
    assert 0 < java["METEOR"] < 1
