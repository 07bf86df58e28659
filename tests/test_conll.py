"""CoNLL reader: format variants and every user-fixable error as one DataError line."""
from pathlib import Path

import pytest

from mpitrain.errors import DataError
from mpitrain.tasks.ner.conll import read_conll
from mpitrain.tasks.ner.prepare import check_tags, collect_labels

WIKIANN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikiann-en"


def write(tmp_path, text, name="data.conll", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


def error(path, **kw) -> str:
    with pytest.raises(DataError) as e:
        read_conll(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_basic_sentences_and_line_numbers(tmp_path):
    p = write(tmp_path, "EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn I-PER\n")
    s = read_conll(p)
    assert [x.tokens for x in s] == [("EU", "rejects"), ("Peter", "Blackburn")]
    assert [x.tags for x in s] == [("B-ORG", "O"), ("B-PER", "I-PER")]
    assert [x.line for x in s] == [1, 4]


def test_docstart_skipped_and_ends_sentence(tmp_path):
    text = "-DOCSTART- -X- -X- O\n\nA O\n-DOCSTART- -X- O\nB B-LOC\n\n-DOCSTART- O\n"
    s = read_conll(write(tmp_path, text))
    assert [x.tokens for x in s] == [("A",), ("B",)]
    assert [x.line for x in s] == [3, 5]


def test_middle_columns_ignored_tag_is_last(tmp_path):
    s = read_conll(write(tmp_path, "U.N. NNP I-NP B-ORG\nofficial NN I-NP O\n"))
    assert s[0].tokens == ("U.N.", "official") and s[0].tags == ("B-ORG", "O")


def test_blank_lines_at_start_end_and_runs(tmp_path):
    s = read_conll(write(tmp_path, "\n\n  \nA O\n\n\n\t\nB O\n\n\n"))
    assert [x.tokens for x in s] == [("A",), ("B",)]
    assert [x.line for x in s] == [4, 8]


def test_no_trailing_newline(tmp_path):
    s = read_conll(write(tmp_path, "A O\nB B-PER"))
    assert s[0].tokens == ("A", "B")


def test_crlf_and_bom(tmp_path):
    s = read_conll(write(tmp_path, "\ufeffA\tO\r\nB\tB-PER\r\n\r\nC\tO\r\n"))
    assert [x.tokens for x in s] == [("A", "B"), ("C",)]
    assert s[0].tags == ("O", "B-PER")


def test_byte_order_marks_and_zero_width_characters_anywhere(tmp_path):
    """Invisible characters are not there: removed inside tokens and tags, a line of
    nothing else is a blank line, and a token of nothing else is no word (skipped)."""
    text = ("\ufeffAn\u200bna\tB-PER\n"        # 1: a leading BOM, a zero-width space inside the token
            "\u200b\u2060\n"                     # 2: blank: ends the sentence
            "\ufeff-DOCSTART- O\n"                # 3: a BOM mid-file (files joined) on a document marker
            "Paris\t\u200dB-LOC\u200c\n"        # 4: inside the tag
            "\u200c\tO\n"                         # 5: a token of nothing visible: skipped
            "is \u2060 NN O\n"                    # 6: an invisible middle column
            "\u200d \ufeff\r\n"                   # 7: blank
            "fine O\n")
    s = read_conll(write(tmp_path, text))
    assert [x.tokens for x in s] == [("Anna",), ("Paris", "is"), ("fine",)]
    assert [x.tags for x in s] == [("B-PER",), ("B-LOC", "O"), ("O",)]
    assert [x.line for x in s] == [1, 4, 8] and s[1].source_line(1) == 6


def test_tabs_and_spaces_mixed(tmp_path):
    s = read_conll(write(tmp_path, "A\tO\nB  \t B-LOC\nC   I-LOC  \n"))
    assert s[0].tokens == ("A", "B", "C") and s[0].tags == ("O", "B-LOC", "I-LOC")


def test_non_ascii_tokens_and_no_break_space_kept_in_token(tmp_path):
    s = read_conll(write(tmp_path, "Zürich\tB-LOC\nNew\u00a0York\tB-LOC\n"))
    assert s[0].tokens == ("Zürich", "New\u00a0York")


def test_language_prefix_removed_once(tmp_path):
    s = read_conll(write(tmp_path, "en:Sioux\tB-ORG\nen:bar:7\tO\nen::\tO\n"))
    assert s[0].tokens == ("Sioux", "bar:7", ":")


def test_language_prefix_kept_when_disabled_or_absent(tmp_path):
    p = write(tmp_path, "en:Sioux\tB-ORG\n")
    assert read_conll(p, strip_prefix=False)[0].tokens == ("en:Sioux",)
    # the first token decides: an ordinary file keeps a token that looks like a prefix
    q = write(tmp_path, "Subject O\nre:meeting O\n", name="plain")
    assert read_conll(q)[0].tokens == ("Subject", "re:meeting")
    # a bare "xx:" first token is not a prefix
    r = write(tmp_path, "re: O\nde:x O\n", name="bare")
    assert read_conll(r)[0].tokens == ("re:", "de:x")


def test_matches_wikiann():
    s = read_conll(WIKIANN / "dev")
    assert len(s) == 10000
    assert s[0].tokens[:3] == ("Sioux", "Falls", "Arena") and s[0].tags[:3] == ("B-ORG", "I-ORG", "I-ORG")
    assert not any(t.startswith("en:") for x in s[:200] for t in x.tokens)


def test_one_column(tmp_path):
    msg = error(write(tmp_path, "A O\nB O\nlonely\n"))
    assert msg.startswith(f"{tmp_path / 'data.conll'}:3: one column ('lonely')")


def test_empty_token_leading_whitespace(tmp_path):
    msg = error(write(tmp_path, "A O\n\tB-PER\n"))
    assert ":2: empty token" in msg


def test_empty_token_after_prefix(tmp_path):
    msg = error(write(tmp_path, "en:A\tO\nen:\tO\n"))
    assert ":2: empty token after the language prefix 'en:'" in msg


def test_malformed_tag_points_at_swapped_columns(tmp_path):
    msg = error(write(tmp_path, "A O\n\nB-PER John\n"))
    assert ":3: tag 'John' is not 'O'" in msg


def test_bad_utf8_names_line_and_column(tmp_path):
    data = "A O\n\n".encode() + b"Caf\xe9 O\n"
    msg = error(write(tmp_path, data))
    assert ":3: byte 0xe9 at column 4 is not valid UTF-8" in msg and "iconv" in msg


def test_bad_utf8_deep_in_large_file(tmp_path):
    data = b"A O\n\n" * 5000 + b"\xff O\n"
    assert ":10001: byte 0xff at column 1" in error(write(tmp_path, data))


@pytest.mark.parametrize("text", ["", "\n\n\n", "-DOCSTART- O\n\n"])
def test_empty_split(tmp_path, text):
    assert "no sentences" in error(write(tmp_path, text))


def test_missing_file(tmp_path):
    assert "file not found" in error(tmp_path / "nope")


def test_unknown_tag_in_dev_names_file_and_line(tmp_path):
    train = read_conll(write(tmp_path, "A B-PER\nB O\n", name="train"))
    labels = collect_labels(train)
    dev_path = write(tmp_path, "X O\n\nY O\nZ B-MISC\n", name="dev")
    with pytest.raises(DataError) as e:
        check_tags(read_conll(dev_path), labels, dev_path)
    assert str(e.value).startswith(f"{dev_path}:4: tag 'B-MISC' is not in the training tag set")


def test_collect_labels_order():
    from mpitrain.tasks.ner.conll import Sentence
    s = [Sentence(("a", "b", "c"), ("I-PER", "B-LOC", "O"), 1),
         Sentence(("d",), ("S-ORG",), 5)]
    assert collect_labels(s) == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "S-ORG", "B-PER", "I-PER"]
