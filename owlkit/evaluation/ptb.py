"""The PTB tokenizer of pycocoevalcap in pure Python: what ``COCOEvalCap`` does to every caption
before BLEU, METEOR, ROUGE-L and CIDEr.

``COCOEvalCap`` runs Stanford CoreNLP 3.4.1's ``PTBTokenizer`` (Java, ``-preserveLines
-lowerCase``) over references and candidates, one caption per line, then drops the tokens of
:data:`PTB_PUNCTUATIONS`. :func:`ptb_tokenize` follows the rules of that tokenizer (its
``PTBLexer`` grammar) that captions meet:

* the lexer is caseless and ``-lowerCase`` lowercases the output **after** the bracket
  escapes, so ``(`` becomes ``-lrb-``, which pycocoevalcap's (upper-case) filter never
  removes: parentheses survive as tokens in the official numbers too;
* abbreviations keep their period: CoreNLP's lists of titles, months, days, states, company
  and number abbreviations (``Blvd.``, ``Ave.``, ``Mr.``, ``Inc.``, ``No.``, ``etc.``...),
  single letters (``Plan B.``) and acronyms (``U.S.``, ``p.m.``, ``Ph.D.``); any other word
  loses its final period;
* a period, ``!`` or ``?`` between letters does not split a word (``teeth.He`` stays
  ``teeth.he``, ``www.example.com`` one token), nor does ``-``, ``&`` or ``/``
  (``black-and-white``, ``AT&T``); numbers keep ``. , :`` between digits (``3.5``,
  ``1,000``, ``10:30``); e-mail addresses stay whole;
* clitics split off: ``n't 's 're 've 'll 'd 'm`` (``can't`` -> ``ca n't``, ``I'd`` -> ``i 'd``),
  and so do CoreNLP's split words ``gonna gotta wanna lemme gimme cannot`` (``gon na``...)
  ``'tis``/``'twas`` (``'t is``) and ``y'all`` (``y' all``); an apostrophe elsewhere splits the word around a
  ``'`` token (``6'2`` -> ``6 ' 2``) except after a ``d o l`` prefix (``o'clock``) and in
  ``'n'``;
* ``"`` becomes ```` `` ```` or ``''`` and ``'`` becomes ````` or ``'`` by position, ``…`` ``...``,
  en/em dashes ``--``.

Emoticons stay whole, their brackets escaped (``:)`` -> ``:-rrb-``). What is left out
(URLs with ``://``, SGML, phone numbers, untokenizable control
characters) does not occur in captions; ``tests/test_eval_ptb.py`` compares this tokenizer
with the Java one on a few hundred captions where Java and pycocoevalcap are installed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PTB_PUNCTUATIONS", "ABBREVIATIONS", "ptb_tokenize", "coco_tokenize", "tokenize_captions"]

# pycocoevalcap/tokenizer/ptbtokenizer.py
PTB_PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                              ".", "?", "!", ",", ":", "-", "--", "...", ";"])

#: words that keep a following period (CoreNLP PTBLexer's ABMONTH, ABDAYS, ABSTATE, ABCOMP,
#: ABNUM, ABPTIT, ABTITLE and the other ABBREV1 / ABBREV4 entries), lowercase
ABBREVIATIONS = frozenset("""
    jan feb mar apr jun jul aug sep sept oct nov dec
    mon tue tues wed thu thurs fri
    ala ariz az ark calif colo conn ct dak del fla ga ill ind kan kans ky la mass md mich minn miss
    mo mont neb nev okla ore pa penn tenn tex va vt wash wis wisc wyo
    inc co cos corp pty ptys pte ptes ltd plc bancorp dept bhd assn univ intl sys invt elec natl mfg mtg
    no nos prop ph tel est ext sq ft
    jr sr bros ph.d ed.d blvd rd esq etc al seq
    mr mrs ms dr drs prof profs sen sens rep reps atty attys lt col gen messrs gov govs adm rev maj
    sgt cpl pvt capt st ste ave pres lieut hon brig cmdr comdr pfc spc supt supts det m mm mme mmes
    mlle mlles mt vs alex wm jos cie a.k.a cf treas
""".split())

_TRANSLATE = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                            "\u2013": "--", "\u2014": "--", "\u2015": "--", "\u2026": "...",
                            "\u00a0": " "})
_TOKEN_RE = re.compile(
    r"(?P<ellipsis>\.\.\.+)"
    r"|(?P<dashes>--+)"
    r"|(?P<email>[^\W_][\w.+-]*@[^\W_][\w-]*(?:\.[^\W_][\w-]*)+)"
    r"|(?P<smiley>(?<![^\W_])[<>]?[:;=][-o*']?[()DPdpO{}@|\[\]\\](?!\S))"
    r"|(?P<acronym>(?:[^\W\d_]\.){2,})"
    r"|(?P<keep>(?i:'n'|'t(?=(?:is|was)(?![^\W_]))|(?<![^\W_])y'(?=all(?![^\W_]))))"
    r"|(?P<clitic>(?i:n't|'(?:s|re|ve|ll|d|m))(?![^\W_]))"
    r"|(?P<word>[^\W_]+(?:(?:[-&'/]|(?<=\d)[.,:](?=\d)|(?<=[^\W\d_])[.!?](?=[^\W\d_]))[^\W_]+)*)"
    r"|(?P<other>\S)"
)
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_OPENERS = {"-LRB-", "-LSB-", "-LCB-", "``", "`"}
_NT = re.compile(r"(?i)^(.+?)(n't)$")
_CLITIC = re.compile(r"(?i)^(.+?)('s|'re|'ve|'ll|'d|'m)$")
_SPLIT = re.compile(r"(?i)^(gon|got|wan|lem|gim|can)(na|ta|na|me|me|not)$")
_SPLIT_PAIRS = {("gon", "na"), ("got", "ta"), ("wan", "na"), ("lem", "me"), ("gim", "me"), ("can", "not")}
_APOSTROPHE_PREFIX = re.compile(r"(?i)^[dol]'[^\W_]")


def _split_word(word: str) -> list[str]:
    """Clitics, CoreNLP's split words, and apostrophes that do not join."""
    for rx in (_NT, _CLITIC):
        m = rx.match(word)
        if m:
            return _split_word(m.group(1)) + [m.group(2)]
    m = _SPLIT.match(word)
    if m and (m.group(1).lower(), m.group(2).lower()) in _SPLIT_PAIRS:
        return [m.group(1), m.group(2)]
    if "'" in word and not _APOSTROPHE_PREFIX.match(word):
        head, _, tail = word.partition("'")
        return _split_word(head) + ["'"] + _split_word(tail)
    return [word]


def _is_abbreviation(token: str) -> bool:
    low = token.lower()
    return low in ABBREVIATIONS or (len(low) == 1 and low.isalpha())


def ptb_tokenize(text: str) -> list[str]:
    """PTB tokens of one caption, lowercased, *before* punctuation filtering.

    >>> ptb_tokenize("A man's dog (black) doesn't run on Main Blvd.")
    ['a', 'man', "'s", 'dog', '-lrb-', 'black', '-rrb-', 'does', "n't", 'run', 'on', 'main', 'blvd.']
    """
    text = text.replace("\n", " ").translate(_TRANSLATE)
    tokens: list[str] = []
    for chunk in text.split():
        chunk_tokens: list[str] = []
        for m in _TOKEN_RE.finditer(chunk):
            kind, tok = m.lastgroup, m.group()
            if kind == "ellipsis":
                chunk_tokens.append("...")
            elif kind == "dashes":
                chunk_tokens.append("--")
            elif kind == "smiley":
                chunk_tokens.append("".join(_BRACKETS.get(c, c) for c in tok))
            elif kind in ("email", "acronym", "keep", "clitic"):
                chunk_tokens.append(tok)
            elif kind == "word":
                chunk_tokens.extend(_split_word(tok))
            elif tok == "." and chunk_tokens and _is_abbreviation(chunk_tokens[-1]) and m.start() > 0 \
                    and chunk[m.start() - 1] != "'":
                chunk_tokens[-1] += "."
            elif tok in _BRACKETS:
                chunk_tokens.append(_BRACKETS[tok])
            elif tok == '"':
                chunk_tokens.append("``" if not chunk_tokens or chunk_tokens[-1] in _OPENERS else "''")
            elif tok == "'":
                chunk_tokens.append("`" if not chunk_tokens or chunk_tokens[-1] in _OPENERS else "'")
            else:
                chunk_tokens.append(tok)
        tokens.extend(chunk_tokens)
    return [t.lower() for t in tokens]


def coco_tokenize(text: str) -> str:
    """What ``PTBTokenizer.tokenize`` returns for one caption: the lowercased PTB tokens
    minus :data:`PTB_PUNCTUATIONS`, joined by single spaces.

    >>> coco_tokenize("A dog, running on the beach.")
    'a dog running on the beach'
    """
    return " ".join(t for t in ptb_tokenize(text) if t not in PTB_PUNCTUATIONS)


def tokenize_captions(captions: Mapping[Any, Sequence[str]]) -> dict[Any, list[str]]:
    """``{id: [caption, ...]}`` -> ``{id: [tokenized caption, ...]}``."""
    return {k: [coco_tokenize(c) for c in v] for k, v in captions.items()}
