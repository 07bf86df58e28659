"""GPT layers: equal to transformers' GPT2LMHeadModel via the export, causal, tied, round trip."""
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mpitrain.errors import UsageError
from mpitrain.layers import build_layer, run_layers
from mpitrain.tasks.gpt.hf_export import export_gpt2, global_to_hf, hf_to_global, load_exported_gpt2
from mpitrain.tasks.gpt.model import TIED_WEIGHTS, GPTConfig, gpt_layers, parameter_shapes, tie_in_place

transformers.logging.set_verbosity_error()

TINY = GPTConfig(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4, dropout=0.1)
EOS = "<|endoftext|>"
SENTENCES = ["the quick brown fox jumps over the lazy dog", "a pipeline of layers trains like one process",
             "hello world, hello pipeline", "the dog sleeps; the fox runs away"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """A tiny byte-level BPE (only the bytes it saw) with the end-of-text token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=TINY.vocab_size, special_tokens=[EOS]))
    assert tok.get_vocab_size() <= TINY.vocab_size
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def build(config=TINY, weights=None, seed=3):
    specs = gpt_layers(config, weights)
    return specs, [build_layer(spec, seed).eval() for spec in specs]


def state_of(specs, layers):
    return {f"{s.name}.{n}": p.detach().clone() for s, layer in zip(specs, layers)
            for n, p in layer.named_parameters()}


@pytest.fixture(scope="module")
def exported(tokenizer_file, tmp_path_factory):
    """Tied layers with every parameter perturbed (so biases, norms and transposes matter), exported."""
    specs, layers = build()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers:
            for p in layer.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    tie_in_place(layers)
    out = tmp_path_factory.mktemp("export") / "gpt"
    export_gpt2(out, TINY, state_of(specs, layers), tokenizer_file, eos_token=EOS)
    return specs, layers, out


def test_logits_equal_transformers_gpt2(exported):
    _, layers, out = exported
    model = transformers.GPT2LMHeadModel.from_pretrained(str(out)).eval()
    ids = torch.randint(0, TINY.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = run_layers(layers, (ids,))
        theirs = model(ids).logits
    assert ours.shape == (3, 20, TINY.vocab_size)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    auto, info = transformers.AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert auto.lm_head.weight.data_ptr() == auto.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(auto.eval()(ids).logits, ours, atol=1e-5, rtol=0)


def test_causal_mask(exported):
    _, layers, _ = exported
    ids = torch.randint(0, TINY.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[:, 10] = (changed[:, 10] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = run_layers(layers, (ids,)), run_layers(layers, (changed,))
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=0, rtol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_parameter_names_shapes_and_separate_tied_parameters():
    specs, layers = build()
    assert [s.name for s in specs] == ["embed", "block.0", "block.1", "head"]
    params = {f"{s.name}.{n}": p for s, layer in zip(specs, layers) for n, p in layer.named_parameters()}
    assert {n: tuple(p.shape) for n, p in params.items()} == parameter_shapes(TINY)
    assert "block.1.attn.c_attn.weight" in params and "block.0.mlp.c_proj.bias" in params
    wte, lm_head = (params[n] for n in TIED_WEIGHTS[0])
    assert wte is not lm_head and wte.data_ptr() != lm_head.data_ptr()
    assert layers[1].attn.c_proj.weight.std() < layers[1].attn.c_attn.weight.std()  # scaled residual init
    tie_in_place(layers)
    assert torch.equal(wte, lm_head) and wte is not lm_head
    for name in params:
        assert hf_to_global(global_to_hf(name)) == name


def test_export_round_trip(exported):
    specs, layers, out = exported
    config, state = load_exported_gpt2(out)
    assert config == TINY
    expected = state_of(specs, layers)
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    # the loaded state builds the same model; the head may come from the embedding alone
    del state["head.lm_head.weight"]
    _, rebuilt = build(config, state, seed=99)
    assert torch.equal(rebuilt[-1].lm_head.weight, expected["embed.wte.weight"])
    ids = torch.randint(0, TINY.vocab_size, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(run_layers(rebuilt, (ids,)), run_layers(layers, (ids,)), atol=0, rtol=0)


def test_export_replaces_an_earlier_export_and_refuses_other_dirs(exported, tokenizer_file, tmp_path):
    specs, layers, _ = exported
    out = tmp_path / "gpt"
    state = state_of(specs, layers)
    export_gpt2(out, TINY, state, tokenizer_file)
    state["embed.wpe.weight"] = state["embed.wpe.weight"] + 1
    export_gpt2(out, TINY, state, tokenizer_file)
    assert torch.equal(load_exported_gpt2(out)[1]["embed.wpe.weight"], state["embed.wpe.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["gpt"]  # no temp dirs left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not an earlier export"):
        export_gpt2(tmp_path / "other", TINY, state, tokenizer_file)
    with pytest.raises(UsageError, match="eos token"):
        export_gpt2(out, TINY, state, tokenizer_file, eos_token="</s>")
    with pytest.raises(UsageError, match=r"do not match the config \(embed.wte.weight \[100, 32\] != \[100, 16\]"):
        export_gpt2(out, TINY.replace(n_embd=16), state, tokenizer_file)


def test_exported_tokenizer_loads_with_auto_tokenizer(exported, tokenizer_file):
    _, _, out = exported
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert isinstance(hf_tok, transformers.PreTrainedTokenizerFast)
    assert hf_tok.eos_token == EOS and hf_tok.eos_token_id == Tokenizer.from_file(str(tokenizer_file)).token_to_id(EOS)
    text = "the lazy fox, hello world"
    assert hf_tok(text)["input_ids"] == Tokenizer.from_file(str(tokenizer_file)).encode(text).ids
    assert hf_tok.decode(hf_tok(text)["input_ids"]) == text


def test_config_hf_round_trip_and_errors():
    raw = TINY.to_hf(bos_token_id=5, eos_token_id=5)
    assert transformers.GPT2Config(**raw).n_inner is None
    assert GPTConfig.from_hf(raw) == TINY
    with pytest.raises(UsageError, match="n_embd=30 is not a multiple"):
        GPTConfig(vocab_size=10, n_positions=8, n_embd=30, n_layer=1, n_head=4)
    with pytest.raises(UsageError, match="activation_function"):
        GPTConfig.from_hf(dict(raw, activation_function="relu"))
    with pytest.raises(UsageError, match="unexpected names"):
        gpt_layers(TINY, {"transformer.wte.weight": torch.zeros(1)})
    _, layers = build()
    with pytest.raises(UsageError, match="exceeds n_positions"):
        layers[0](torch.zeros(1, TINY.n_positions + 1, dtype=torch.long))
