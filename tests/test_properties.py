"""Property tests: whatever a user gives the readers of data, job files, `--set`
and checkpoint manifests, the answer is a valid result or a one-line UsageError
-- never another exception."""
import json
import math
import re
import tempfile
from pathlib import Path

from hypothesis import assume, given, settings, strategies as st

from mpitrain.checkpoint.files import CheckpointError
from mpitrain.checkpoint.manifest import MANIFEST, read_manifest
from mpitrain.checkpoint.pieces import datasets
from mpitrain.config import section_classes
from mpitrain.errors import ConfigError, DataError
from mpitrain.jobfile import load_job, parse_override
from mpitrain.tasks import INVISIBLE, resolve_task
from mpitrain.tasks.gpt.corpus import read_text_files
from mpitrain.tasks.ner.conll import read_conll

FAST = settings(max_examples=150, deadline=None)
TAG = re.compile(r"^(O|[BIESLU]-\S+)$")


def one_line(error: Exception) -> str:
    text = str(error)
    assert text and "\n" not in text and "\r" not in text, repr(text)
    return text


def in_file(data: bytes, name: str = "data.txt"):
    """Run a reader on `data` written to a fresh file (hypothesis and pytest's
    per-test tmp_path do not mix)."""
    folder = tempfile.TemporaryDirectory()
    path = Path(folder.name) / name
    path.write_bytes(data)
    return folder, path


# -- CoNLL ---------------------------------------------------------------------------------------
WORDS = ["Anna", "Zürich", "New\u00a0York", "en:Paris", "en:", "-DOCSTART-", "O", "B-PER", "I-LOC", "x:y", "ü"]
PIECES = WORDS + [" ", "\t", "\n", "\r\n", "\n\n", *INVISIBLE, "\x00", "\x1c", "\u2028", "\x85"]
invisible_runs = st.text(alphabet=INVISIBLE, min_size=1, max_size=3)


def check_sentences(sentences, lines: int) -> None:
    for s in sentences:
        assert len(s.tokens) == len(s.tags) > 0 and 1 <= s.line <= lines
        for token, tag in zip(s.tokens, s.tags):
            assert token and not set(token) & set(INVISIBLE + " \t\r\n\f\v"), repr(token)
            assert TAG.match(tag) and not set(tag) & set(INVISIBLE), repr(tag)
        assert [s.source_line(i) for i in range(len(s))] == sorted({s.source_line(i) for i in range(len(s))})
        assert s.source_line(len(s) - 1) <= lines


def read_conll_bytes(data: bytes):
    folder, path = in_file(data)
    with folder:
        try:
            result = read_conll(path)
        except DataError as e:
            assert one_line(e).startswith(f"{path}:"), str(e)
            return None
        check_sentences(result, data.count(b"\n") + 1)
        return result


@FAST
@given(st.binary(max_size=400))
def test_conll_reader_takes_any_bytes(data):
    read_conll_bytes(data)


@FAST
@given(st.lists(st.sampled_from(PIECES), max_size=60), st.booleans())
def test_conll_reader_takes_any_mix_of_its_own_pieces(pieces, bom):
    read_conll_bytes((("\ufeff" if bom else "") + "".join(pieces)).encode())


conll_line = st.tuples(st.sampled_from(["Anna", "Zürich", "sings", "U.N.", "en:Paris", "é"]),
                       st.sampled_from(["O", "B-PER", "I-PER", "B-LOC"]),
                       st.sampled_from([" ", "\t", " NN ", "\t\t"]))
conll_text = st.lists(st.lists(conll_line, min_size=1, max_size=5), min_size=1, max_size=4).map(
    lambda sentences: "\n\n".join("\n".join(f"{tok}{sep}{tag}" for tok, tag, sep in s) for s in sentences) + "\n")


@FAST
@given(conll_text, st.data())
def test_invisible_characters_anywhere_change_nothing(text, data):
    """Byte-order marks and zero-width characters put anywhere (inside tokens, tags,
    between columns, on blank lines) are read as if they were not there."""
    clean = read_conll_bytes(text.encode())
    spots = data.draw(st.lists(st.integers(0, len(text)), min_size=1, max_size=8, unique=True))
    dirty = text
    for spot in sorted(spots, reverse=True):
        dirty = dirty[:spot] + data.draw(invisible_runs) + dirty[spot:]
    assert read_conll_bytes(dirty.encode()) == clean


# -- text files (GPT) ----------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=400))
def test_text_reader_takes_any_bytes(data):
    folder, path = in_file(data)
    with folder:
        try:
            [doc] = read_text_files(path)
        except DataError as e:
            assert one_line(e).startswith(f"{path}:")
            return
    assert not set(doc) & set(INVISIBLE) and "\r\n" not in doc


@FAST
@given(st.text(alphabet=st.characters(exclude_characters=INVISIBLE, exclude_categories=("Cs",))), st.data())
def test_text_reader_ignores_invisible_characters_anywhere(text, data):
    dirty = text
    for spot in sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6, unique=True)), reverse=True):
        dirty = dirty[:spot] + data.draw(invisible_runs) + dirty[spot:]
    folder, path = in_file(dirty.encode())
    with folder:
        assert read_text_files(path) == [text.replace("\r\n", "\n")]


# -- job files and --set -------------------------------------------------------------------------
KNOWN = {name: [f for f in cls.__dataclass_fields__ if f != "task"]  # the default task's: [job] task imports
         for name, cls in section_classes(resolve_task("ner").sections).items()}
names = st.sampled_from(sorted(KNOWN)) | st.text(max_size=8)
keys = st.sampled_from(sorted({k for ks in KNOWN.values() for k in ks})) | st.text(max_size=8)
scalars = (st.integers() | st.integers(-2**70, 2**70).map(lambda n: n * 10**300) | st.floats() | st.booleans()
           | st.text(max_size=12) | st.sampled_from(["ring", "cuts", "adamw", "pad", "auto"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=2), max_leaves=6)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()) + "}"


jobs = st.dictionaries(names, st.dictionaries(keys.filter(lambda k: k != "task"), values, max_size=4), max_size=4)


def load_or_config_error(path, overrides=()):
    try:
        return load_job(path, overrides)
    except ConfigError as e:
        one_line(e)
        return None


@FAST
@given(jobs)
def test_job_files_of_any_sections_keys_and_values(job):
    text = "".join(f"[{json.dumps(s, ensure_ascii=False)}]\n" + "".join(
        f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}\n" for k, v in table.items())
        for s, table in job.items())
    folder, path = in_file(text.encode(), "job.toml")
    with folder:
        cfg = load_or_config_error(path)
    if cfg is not None:  # what was accepted is what the file said
        for section, table in job.items():
            for key, value in table.items():
                got = getattr(cfg.section(section), key)
                assert got == value or (isinstance(value, int) and got == float(value)), (section, key, got)


@FAST
@given(st.binary(max_size=300))
def test_job_files_of_any_bytes(data):
    folder, path = in_file(data, "job.toml")
    with folder:
        load_or_config_error(path)


overrides = (st.tuples(names, keys, values).map(lambda t: f"{t[0]}.{t[1]}={toml_value(t[2])}")
             | st.text(max_size=30))


@FAST
@given(overrides)
def test_set_of_anything(text):
    try:
        section, key, _ = parse_override(text)
    except ConfigError as e:
        one_line(e)
        return
    assume((section, key) != ("job", "task"))  # would import whatever module it names
    load_or_config_error(None, [text])


def test_set_reads_one_value_not_a_document():
    assert parse_override("grid.dp=2\nx = 3")[2] == "2\nx = 3"  # then refused as not an integer
    assert parse_override(" grid . dp = 2") == ("grid", "dp", 2)
    assert "expected a finite number" in one_line(_config_error(None, ["train.lr=nan"]))
    assert "cannot read the job file" in one_line(_config_error(Path(__file__).parent, []))


def _config_error(path, sets):
    try:
        load_job(path, sets)
    except ConfigError as e:
        return e
    raise AssertionError("accepted")


# -- checkpoint manifests ------------------------------------------------------------------------
def valid_manifest() -> dict:
    split = {"dim": 0, "size": 4, "parts": 2, "chunks": 1, "padded": False}
    return {"format_version": 2, "task": "gpt", "files": ["rank-00000.h5", "rank-00001.h5"],
            "layout": {"dp": 1, "pp": 1, "tp": 2, "world": 2},
            "tensors": {"model/a.weight": {"file": "rank-00000.h5", "shape": [2, 3], "dtype": "float32",
                                           "crc32": 7},
                        "model/b.weight": {"shape": [4, 3], "dtype": "float32", "split": split,
                                           "pieces": [{"file": f"rank-0000{i}.h5", "shape": [2, 3], "crc32": i}
                                                      for i in range(2)]},
                        "optim/a.weight/exp_avg": {"file": "rank-00001.h5", "shape": [2, 3], "dtype": "float32",
                                                   "crc32": 9}},
            "param_groups": [{"lr": 0.1, "params": ["a.weight", "b.weight"]}],
            "state": {"step": 4, "epoch": 0, "step_in_epoch": 4, "metrics": {"loss": 1.5}, "task_state": {},
                      "scheduler": {"base_lrs": [0.1], "_last_lr": [0.05], "last_epoch": 4}}}


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)


def read_manifest_bytes(data: bytes):
    folder = tempfile.TemporaryDirectory()
    with folder:
        directory = Path(folder.name)
        (directory / MANIFEST).write_bytes(data)
        for name in ("rank-00000.h5", "rank-00001.h5"):
            (directory / name).write_bytes(b"")
        try:
            manifest = read_manifest(directory)
        except CheckpointError as e:
            assert one_line(e).startswith(str(directory))
            return None
        for key, entry in manifest["tensors"].items():  # what the loaders read next
            try:
                datasets(directory, key, entry)
            except CheckpointError as e:
                one_line(e)
        return manifest


def test_a_valid_manifest_is_read():
    assert read_manifest_bytes(json.dumps(valid_manifest()).encode()) == valid_manifest()


@FAST
@given(st.binary(max_size=300))
def test_manifest_of_any_bytes(data):
    read_manifest_bytes(data)


@FAST
@given(json_values)
def test_manifest_of_any_json(value):
    read_manifest_bytes(json.dumps(value).encode())


@FAST
@given(st.data())
def test_manifest_with_any_one_value_changed(data):
    """A valid manifest with one entry, anywhere in it, replaced by any JSON value
    or removed: read as a manifest the loaders can use, or refused in one line."""
    manifest = valid_manifest()
    node = manifest
    while True:
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        if isinstance(node[key], (dict, list)) and node[key] and data.draw(st.booleans()):
            node = node[key]
            continue
        if isinstance(node, dict) and data.draw(st.booleans()):
            del node[key]
        else:
            node[key] = data.draw(json_values)
        break
    read_manifest_bytes(json.dumps(manifest).encode())


def test_a_manifest_naming_a_missing_file_is_refused():
    manifest = valid_manifest()
    manifest["files"].append("rank-00002.h5")
    assert read_manifest_bytes(json.dumps(manifest).encode()) is None
