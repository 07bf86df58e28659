"""Export the GPT model as a Hugging Face GPT-2 directory, and read one back.

The directory holds `config.json` (GPT2LMHeadModel, tied embeddings), `model.safetensors`
with HF names, `tokenizer.json` and `tokenizer_config.json`, so
``transformers.GPT2LMHeadModel.from_pretrained(dir)`` (or `AutoModelForCausalLM`) and
``AutoTokenizer.from_pretrained(dir)`` load it.

Name mapping (ours <-> HF): ``embed.X`` <-> ``transformer.X``, ``block.{i}.X`` <->
``transformer.h.{i}.X``, ``head.ln_f.X`` <-> ``transformer.ln_f.X``,
``head.lm_head.weight`` <-> ``lm_head.weight``. HF's ``c_attn``/``c_proj``/``c_fc``
are `Conv1D` ([in, out]): their weights are our `nn.Linear` weights transposed. The
tied ``lm_head.weight`` is not written (safetensors stores no shared tensors; HF ties
it to ``transformer.wte.weight`` on load).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from mpitrain.atomic import staged_dir
from mpitrain.errors import UsageError
from mpitrain.tasks.gpt.model import TIED_WEIGHTS, GPTConfig, parameter_shapes

SAFETENSORS = "model.safetensors"
_CONV1D = re.compile(r"\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
_WTE, _LM_HEAD = TIED_WEIGHTS[0]
_PREFIXES = [("block.", "transformer.h."), ("head.ln_f.", "transformer.ln_f."), ("head.lm_head.", "lm_head."),
             ("embed.", "transformer.")]  # most specific HF prefix first


def is_conv1d(name: str) -> bool:
    """Whether `name` (ours or HF's) is a weight HF stores transposed (Conv1D)."""
    return bool(_CONV1D.search(name))


def global_to_hf(name: str) -> str:
    """HF GPT2LMHeadModel's name for one of our global parameter names."""
    for ours, hf in _PREFIXES:
        if name.startswith(ours):
            return hf + name[len(ours):]
    raise UsageError(f"GPT export: {name!r} is not a parameter name of this model")


def hf_to_global(name: str) -> str | None:
    """Our name for an HF GPT-2 tensor name (``transformer.`` prefix optional); None for
    tensors we do not keep (old checkpoints' ``attn.bias`` / ``attn.masked_bias`` buffers)."""
    if not name.startswith(("transformer.", "lm_head.")):
        name = "transformer." + name
    if name.endswith((".attn.bias", ".attn.masked_bias")):
        return None
    for ours, hf in _PREFIXES:
        if name.startswith(hf):
            return ours + name[len(hf):]
    raise UsageError(f"GPT-2 weights: tensor {name!r} is not part of a GPT-2 model")


def _check_names(config: GPTConfig, state: dict, where: str, fix: str) -> None:
    """`state` holds exactly the config's parameters (the tied head optional), shaped right."""
    expected = parameter_shapes(config)
    missing = [n for n in expected if n not in state and n != _LM_HEAD]
    unknown = [n for n in state if n not in expected]
    bad = [f"{n} {list(t.shape)} != {list(expected[n])}" for n, t in state.items()
           if n in expected and tuple(t.shape) != expected[n]]
    if missing or unknown or bad:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unknown[:3]}" if unknown else bad[0]
        raise UsageError(f"{where}: tensors do not match the config ({what}); {fix}")


def _tokenizer_eos(tokenizer_file: Path, eos_token: str, vocab_size: int) -> int:
    from tokenizers import Tokenizer

    if not tokenizer_file.is_file():
        raise UsageError(f"GPT export: tokenizer file {str(tokenizer_file)!r} does not exist; "
                         "give the tokenizer.json the model was trained with")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:
        raise UsageError(f"GPT export: cannot read {tokenizer_file} as a tokenizers file ({exc})") from exc
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise UsageError(f"GPT export: eos token {eos_token!r} is not in {tokenizer_file}; "
                         "give the end-of-text token the tokenizer defines")
    if tokenizer.get_vocab_size() > vocab_size:
        raise UsageError(f"GPT export: {tokenizer_file} has {tokenizer.get_vocab_size()} tokens but the model "
                         f"vocab_size is {vocab_size}; export with the model's own tokenizer")
    return eos_id


def export_gpt2(out_dir: str | Path, config: GPTConfig, state: dict[str, torch.Tensor],
                tokenizer_file: str | Path, eos_token: str = "<|endoftext|>") -> Path:
    """Write a Hugging Face GPT2LMHeadModel directory; returns its path.

    state: our global names -> tensors, gathered from all stages (``head.lm_head.weight``
    optional; if given it must equal ``embed.wte.weight``). Written to a temporary
    sibling and renamed into place: an existing export at `out_dir` is replaced only
    once the new one is complete. A non-empty directory without ``config.json`` is
    refused (it is not an export).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not (out_dir.is_dir() and (not any(out_dir.iterdir())
                                                       or (out_dir / "config.json").is_file())):
        raise UsageError(f"GPT export: {out_dir} exists and is not an earlier export; choose another directory")
    _check_names(config, state, "GPT export", "export the full model with the config it was built from")
    if _LM_HEAD in state and not torch.allclose(state[_LM_HEAD].float().cpu(), state[_WTE].float().cpu(),
                                                rtol=1e-3, atol=1e-5):
        raise UsageError(f"GPT export: {_LM_HEAD} differs from {_WTE} but they are tied; "
                         "export a state whose tied weights were kept equal")
    tokenizer_file = Path(tokenizer_file).expanduser()
    eos_id = _tokenizer_eos(tokenizer_file, eos_token, config.vocab_size)

    tensors = {}
    for name, tensor in state.items():
        if name != _LM_HEAD:
            tensor = tensor.detach().to("cpu", copy=True)
            tensors[global_to_hf(name)] = (tensor.t() if is_conv1d(name) else tensor).contiguous()
    hf_config = dict(config.to_hf(bos_token_id=eos_id, eos_token_id=eos_id),
                     dtype=str(state[_WTE].dtype).removeprefix("torch."))
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eos_token, "eos_token": eos_token,
                  "unk_token": eos_token, "model_max_length": config.n_positions, "add_prefix_space": False,
                  "clean_up_tokenization_spaces": False}
    with staged_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
        shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
    return out_dir


def load_exported_gpt2(model_dir: str | Path) -> tuple[GPTConfig, dict[str, torch.Tensor]]:
    """(config, global-name tensors) of an exported (or any tied GPT-2 safetensors) directory.

    The result includes ``head.lm_head.weight`` (equal to ``embed.wte.weight``); build
    the model with ``gpt_layers(config, weights)``.
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir).expanduser()
    config_path, weights_path = model_dir / "config.json", model_dir / SAFETENSORS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UsageError(f"{model_dir}: no {path.name}; give a directory written by export_gpt2")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{config_path}: cannot read as JSON ({exc}); restore a valid config.json") from exc
    config = GPTConfig.from_hf(raw, where=str(config_path))
    state = {}
    for hf_name, tensor in load_file(str(weights_path)).items():
        name = hf_to_global(hf_name)
        if name is not None and name != _LM_HEAD:
            state[name] = (tensor.t() if is_conv1d(name) else tensor).contiguous()
    _check_names(config, state, str(weights_path), "re-export the model")
    state[_LM_HEAD] = state[_WTE].clone()
    return config, state
