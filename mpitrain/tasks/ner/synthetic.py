"""A deterministic synthetic NER corpus (PER, ORG, LOC) and a WordPiece vocabulary
for it, so the default BERT NER job needs no download.

Sentences come from templates whose words give clear contextual cues ("born in",
"shares of", "Mr.") filled with names from fixed lists. Every fourth name of each
list is held out of train: dev and test draw 20% of their names from that
held-out pool, so a model must use context rather than memorise names.

The vocabulary is built from the train split: words seen at least twice, plus
every character and its ``##`` form. Held-out names are therefore split into
character pieces. So that training shows such pieces too, a share of name words
(a quarter in train, a tenth in dev and test) is invented from syllables: nearly
all occur once and stay out of the vocabulary.

Files are written in WikiANN's format (``en:Token<TAB>TAG``, blank line between
sentences) so they go through the same reader.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import normalizers, pre_tokenizers

from mpitrain.errors import UsageError
from mpitrain.tasks.ner.tokenize import SPECIAL_TOKENS

FIRST = """James Maria Ahmed Yuki Olga Pedro Fatima Lars Chen Amara Diego Ingrid Kofi Priya
Tomas Aisha Hugo Mei Rafael Zara Ivan Leila Mateo Sofia Kwame Nadia Oscar Elena Hiroshi
Grace Felix Hana Omar Lucia Anton Rosa Emil Noor Victor Clara Samir Ines Bruno Alma Dmitri
Eva Jonas Laila Marco Tara Nikolai Vera Pablo Keiko Tariq Anya Caleb Mira Joaquin Selma""".split()
LAST = """Smith Garcia Tanaka Novak Okafor Lindqvist Moreau Rossi Kowalski Haddad Fischer
Silva Petrov Nakamura Mensah Jensen Duarte Ivanova Schmidt Moretti Brennan Takahashi Dubois
Horvat Abebe Larsen Romero Weber Yilmaz Castillo Kruger Hoffman Rahman Lund Ferreira Sato
Varga Novotny Adeyemi Berg Marchetti Quinn Santos Keller Oyelaran Holm Vasquez Richter""".split()
ORG_STEM = """Acme Zenith Apex Vertex Nova Orion Summit Pioneer Atlas Horizon Quantum Titan
Meridian Beacon Falcon Cobalt Sterling Crescent Evergreen Pinnacle Redwood Silverline Polaris
Keystone Northwind Bluewater Ironclad Sunrise Granite Harbor Lumen Catalyst Sequoia Vanguard
Everest Halcyon Paragon Radiant Solstice Tundra""".split()
ORG_SUFFIX = """Industries Group Holdings Motors Systems Partners Foods Airlines Energy Bank Media
Pharmaceuticals Logistics Telecom Insurance Capital Robotics Textiles""".split()
CLUB = "United Rovers City Athletic Wanderers".split()
CITY = """Paris Lagos Osaka Lima Oslo Cairo Madrid Nairobi Lisbon Hanoi Dublin Quito Vienna
Accra Prague Seoul Berlin Tunis Warsaw Bogota Athens Dakar Helsinki Manila Zurich Kyoto
Porto Krakow Mumbai Tbilisi Boston Denver Geneva Naples Sapporo Bergen Leeds Valencia
New_York San_Diego Buenos_Aires Los_Angeles Cape_Town Hong_Kong Rio_de_Janeiro Abu_Dhabi""".split()
COUNTRY = """France Nigeria Japan Peru Norway Egypt Spain Kenya Portugal Vietnam Ireland
Ecuador Austria Ghana Poland Greece Senegal Finland Chile Brazil Canada Mexico Sweden India
Turkey Morocco Iceland Uruguay Mongolia Jordan New_Zealand South_Korea Costa_Rica Sri_Lanka""".split()
NATURE = """Amber Silver Crystal Thunder Eagle Maple Heron Stone Willow Raven Cedar Misty
Golden Shadow Copper Pine""".split()
MONTH = """January February March April May June July August September October November
December""".split()
DAY = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
TITLE = "Mr. Ms. Dr. Professor President Minister Coach Judge".split()

# {PER} {ORG} {LOC} {CITY} {COUNTRY} {LAST}: entities ({LAST} is a surname after a title);
# {NUM} {YEAR} {DAY} {MONTH} {TITLE}: filler tagged O.
TEMPLATES = """{PER} was born in {LOC} in {YEAR} .
{PER} joined {ORG} in {MONTH} .
{ORG} opened a new office in {CITY} .
According to {PER} , {ORG} will hire {NUM} workers .
{PER} , the chief executive of {ORG} , said the deal was fair .
Shares of {ORG} fell {NUM} percent on {DAY} .
The mayor of {CITY} met {PER} on {DAY} .
Heavy rain hit {LOC} and {LOC} this week .
{PER} scored twice as {ORG} beat {ORG} .
{TITLE} {LAST} told reporters in {CITY} that talks would continue .
{ORG} said profits rose in {COUNTRY} last year .
She moved from {CITY} to {CITY} in {YEAR} .
{PER} works as an engineer at {ORG} .
Tourists in {LOC} visited the old town on {DAY} .
{ORG} signed a contract with {ORG} worth {NUM} million dollars .
Talks between {COUNTRY} and {COUNTRY} ended without a deal .
The president of {COUNTRY} will visit {CITY} in {MONTH} .
{PER} and {PER} were married in {CITY} .
A spokesman for {ORG} declined to comment .
{TITLE} {LAST} resigned from {ORG} after {NUM} years .
Flights from {CITY} to {CITY} were cancelled on {DAY} .
{PER} said the team would play in {CITY} next season .
The new factory of {ORG} near {CITY} employs {NUM} people .
Police in {CITY} arrested {NUM} people on {DAY} .
{PER} , who lives in {LOC} , won the prize .
Analysts at {ORG} expect growth in {COUNTRY} to slow .
{ORG} was founded by {PER} in {YEAR} .
The river flows from {COUNTRY} into {COUNTRY} .
{PER} interviewed {PER} for {ORG} .
Exports from {COUNTRY} rose {NUM} percent in {MONTH} .
It was a quiet {DAY} and nothing much happened .
Prices rose by {NUM} percent in {MONTH} .
{TITLE} {LAST} thanked the people of {LOC} .
Workers at {ORG} went on strike in {CITY} .
{PER} left {ORG} to join {ORG} .
The embassy of {COUNTRY} in {CITY} was closed on {DAY} .
Fans of {ORG} celebrated in {CITY} until late .
{PER} bought a house in {LOC} .
{ORG} and {ORG} agreed to merge .
Snow fell across {LOC} for {NUM} days .
In {YEAR} , {PER} became the first woman to lead {ORG} .
The meeting in {CITY} was chaired by {TITLE} {LAST} .
{PER} is a student at {ORG} .
Hikers climbed {LOC} on {DAY} .
Ambassador {PER} arrived in {COUNTRY} on {DAY} .
{ORG} shares closed higher on {DAY} .
The train from {CITY} was {NUM} minutes late .
Nobody expected the result , said {PER} .""".splitlines()
PREFIXES = ["", "", "", "On {DAY} ,", "Last year ,", "In {YEAR} ,", "Meanwhile ,", "However ,"]
SPLIT_STREAM = {"train": 1, "dev": 2, "test": 3}
SYLLABLES = """ka lo mi ren do sa vi tor bel an ix mar zu pe ol ny qua ste fan gor li
ha mu sen ti ra kel vo dan""".split()
# share of name words invented from syllables (one-off words, split into pieces)
INVENTED_SHARE = {"train": 0.25, "dev": 0.1, "test": 0.1}


def _pools(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train pool, held-out pool): every fourth name is held out."""
    return [n for i, n in enumerate(names) if i % 4 != 3], [n for i, n in enumerate(names) if i % 4 == 3]


class _Filler:
    def __init__(self, rng: random.Random, held_out_share: float, invented_share: float):
        self.rng, self.share, self.invented = rng, held_out_share, invented_share

    def pick(self, names: Sequence[str]) -> list[str]:
        if self.rng.random() < self.invented:
            n = self.rng.choice((3, 3, 4))
            return ["".join(self.rng.choice(SYLLABLES) for _ in range(n)).capitalize()]
        train, held = _pools(names)
        pool = held if self.share and self.rng.random() < self.share else train
        return self.rng.choice(pool).split("_")

    def entity(self, slot: str) -> tuple[list[str], str]:
        r, pick = self.rng.random(), self.pick
        if slot == "PER":
            words = pick(FIRST) + pick(LAST) if r < 0.8 else pick(FIRST)
            return words, "PER"
        if slot == "LAST":
            return pick(LAST), "PER"
        if slot == "ORG":
            if r < 0.5:
                return pick(ORG_STEM) + [self.rng.choice(ORG_SUFFIX)], "ORG"
            if r < 0.7:
                return pick(ORG_STEM), "ORG"
            if r < 0.85:
                return ["University", "of"] + pick(CITY), "ORG"
            return pick(CITY) + [self.rng.choice(CLUB)], "ORG"
        if slot == "CITY":
            return pick(CITY), "LOC"
        if slot == "COUNTRY":
            return pick(COUNTRY), "LOC"
        if slot == "LOC":
            if r < 0.45:
                return pick(CITY), "LOC"
            if r < 0.8:
                return pick(COUNTRY), "LOC"
            kind = self.rng.choice(["River", "Mount", "Lake"])
            name = pick(NATURE)
            return (["Mount"] + name if kind == "Mount" else name + [kind]), "LOC"
        raise KeyError(slot)

    def filler(self, slot: str) -> str:
        rng = self.rng
        return {"NUM": lambda: str(rng.randint(2, 99)), "YEAR": lambda: str(rng.randint(1950, 2023)),
                "DAY": lambda: rng.choice(DAY), "MONTH": lambda: rng.choice(MONTH),
                "TITLE": lambda: rng.choice(TITLE)}[slot]()


def generate_sentences(seed: int, n: int, held_out_share: float,
                       invented_share: float) -> list[tuple[list[str], list[str]]]:
    """``n`` (tokens, tags) pairs. ``invented_share`` of name words are invented
    from syllables; of the rest, ``held_out_share`` come from the held-out pools
    (0 for train)."""
    rng = random.Random(seed)
    fill = _Filler(rng, held_out_share, invented_share)
    out = []
    for _ in range(n):
        template = (rng.choice(PREFIXES) + " " + rng.choice(TEMPLATES)).split()
        tokens, tags = [], []
        for piece in template:
            if piece.startswith("{") and piece.endswith("}"):
                slot = piece[1:-1]
                if slot in ("NUM", "YEAR", "DAY", "MONTH", "TITLE"):
                    tokens.append(fill.filler(slot))
                    tags.append("O")
                    continue
                words, typ = fill.entity(slot)
                tokens.extend(words)
                tags.extend([f"B-{typ}"] + [f"I-{typ}"] * (len(words) - 1))
            else:
                tokens.append(piece)
                tags.append("O")
        out.append((tokens, tags))
    return out


def _write_conll(path: Path, sentences, prefix: str) -> None:
    lines = []
    for tokens, tags in sentences:
        lines.extend(f"{prefix}{t}\t{g}" for t, g in zip(tokens, tags))
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_vocab(sentences: Iterable[Sequence[str]], min_count: int = 1) -> list[str]:
    """A lowercase WordPiece vocabulary: special tokens ([PAD] = 0), every
    character and its ``##`` form (a-z, 0-9 and any seen), then the words seen at
    least ``min_count`` times, most frequent first (ties alphabetically)."""
    norm = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for tokens in sentences:
        for token in tokens:
            counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(token)))
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789").union(*map(set, counts)))
    vocab = list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars]
    seen = set(vocab)
    for word, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if c >= min_count and word not in seen:
            vocab.append(word)
            seen.add(word)
    return vocab


def write_vocab(path, sentences: Iterable[Sequence[str]], min_count: int = 1) -> Path:
    """Write `build_vocab` as ``vocab.txt`` (one token per line) and a
    ``tokenizer_config.json`` saying ``do_lower_case`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(build_vocab(sentences, min_count)) + "\n", encoding="utf-8")
    (path.parent / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}) + "\n", encoding="utf-8")
    return path


def write_synthetic_corpus(out_dir, seed: int = 0, n_train: int = 4000, n_dev: int = 500,
                           n_test: int = 500, held_out_share: float = 0.2,
                           prefix: str = "en:") -> dict[str, Path]:
    """Write ``train``, ``dev``, ``test`` (CoNLL, WikiANN format) and ``vocab.txt``
    (+ ``tokenizer_config.json``) into ``out_dir``. Same arguments, same bytes.
    Returns {"train", "dev", "test", "vocab"} -> path."""
    if min(n_train, n_dev, n_test) < 1:
        raise UsageError(f"synthetic corpus sizes must be >= 1 (train={n_train}, dev={n_dev}, "
                         f"test={n_test}); raise them in the job file")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    train = None
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        share = 0.0 if split == "train" else held_out_share
        sentences = generate_sentences(seed * 10 + SPLIT_STREAM[split], n, share,
                                       INVENTED_SHARE[split])
        train = sentences if split == "train" else train
        paths[split] = out / split
        _write_conll(paths[split], sentences, prefix)
    paths["vocab"] = write_vocab(out / "vocab.txt", (tokens for tokens, _ in train), min_count=2)
    return paths
