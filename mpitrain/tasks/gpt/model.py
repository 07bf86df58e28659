"""A GPT-2-style decoder-only causal language model, as pipeline layers.

Layers (any partition of this list works):

    "embed"      (input_ids,) int64 [B, T] -> hidden [B, T, C]   (wte + wpe, dropout)
    "block.i"    hidden -> hidden   pre-LayerNorm GPT-2 block: causal attention, MLP
    "head"       hidden -> logits [B, T, V]                      (ln_f, lm_head)

Parameter names mirror Hugging Face's GPT-2 (``block.3.attn.c_attn.weight`` is HF's
``transformer.h.3.attn.c_attn.weight``, transposed: we use `nn.Linear`, HF uses
`Conv1D`); see `hf_export`.

Tensor parallelism (tp > 1, `parallelize`): the token embedding and the output
layer are split by vocabulary (padded to a multiple of tp), attention by heads
(q, k, v column-parallel, c_proj row-parallel), the MLP column- then
row-parallel; LayerNorms, position embeddings and the biases added after a
row-parallel sum are replicated. The head then returns this rank's slice of the
logits, which `VocabParallelCrossEntropy` turns into the loss.

Tied embeddings: ``embed.wte.weight`` and ``head.lm_head.weight`` are one weight
(`TIED_WEIGHTS`), but each layer owns its *own* parameter, because with pipeline
parallelism the two layers live on different ranks. The engine copies the first to
the second at start and sums their gradients. When weights are loaded, the head's
copy is set from ``embed.wte.weight`` if the dict has no ``head.lm_head.weight``; a
single-process user of fresh layers calls `tie_in_place` before running them.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mpitrain.dropout import attention, dropout
from mpitrain.errors import UsageError
from mpitrain.layers import LayerSpec

TIED_WEIGHTS = [("embed.wte.weight", "head.lm_head.weight")]
INIT_STD = 0.02
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    dropout: float = 0.0          # embedding, residual and attention dropout
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"GPTConfig: {name}={value!r} must be a positive integer; fix the model config")
        if self.n_embd % self.n_head:
            raise UsageError(f"GPTConfig: n_embd={self.n_embd} is not a multiple of n_head={self.n_head}; "
                             "choose sizes that divide")
        for name, low, high in (("dropout", 0.0, 1.0), ("layer_norm_epsilon", 1e-12, 1.0)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and low <= value < high):
                raise UsageError(f"GPTConfig: {name}={value!r} must be in [{low}, {high}); fix the model config")

    def replace(self, **changes) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    def to_hf(self, bos_token_id: int = 0, eos_token_id: int = 0) -> dict:
        """The fields of a transformers `GPT2Config` (``config.json``) for this model."""
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": self.vocab_size, "n_positions": self.n_positions, "n_embd": self.n_embd,
            "n_layer": self.n_layer, "n_head": self.n_head, "n_inner": None,
            "activation_function": "gelu_new", "resid_pdrop": self.dropout, "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout, "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": INIT_STD, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
            "add_cross_attention": False, "tie_word_embeddings": True, "use_cache": True,
            "bos_token_id": bos_token_id, "eos_token_id": eos_token_id,
        }

    @classmethod
    def from_hf(cls, raw: Mapping, where: str = "GPT-2 config") -> "GPTConfig":
        """Read a `GPT2Config` dict (``config.json``); rejects variants this model cannot express."""
        if raw.get("model_type", "gpt2") != "gpt2":
            raise UsageError(f"{where}: model_type {raw.get('model_type')!r} is not supported; use a GPT-2 model")
        aliases = {"n_embd": "hidden_size", "n_positions": "max_position_embeddings",
                   "n_head": "num_attention_heads", "n_layer": "num_hidden_layers"}
        values = {}
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = raw.get(name, raw.get(aliases.get(name, name)))
            if value is None:
                raise UsageError(f"{where}: missing {name}; this is not a complete GPT-2 config.json")
            values[name] = value
        unsupported = [
            ("n_inner", raw.get("n_inner") not in (None, 4 * values["n_embd"]), "None (4 * n_embd)"),
            ("activation_function", raw.get("activation_function", "gelu_new") not in _TANH_GELUS, "'gelu_new'"),
            ("scale_attn_weights", raw.get("scale_attn_weights", True) is not True, "true"),
            ("scale_attn_by_inverse_layer_idx", bool(raw.get("scale_attn_by_inverse_layer_idx")), "false"),
            ("add_cross_attention", bool(raw.get("add_cross_attention")), "false"),
            ("tie_word_embeddings", raw.get("tie_word_embeddings", True) is not True, "true"),
        ]
        for key, bad, want in unsupported:
            if bad:
                raise UsageError(f"{where}: {key}={raw.get(key)!r} is not supported; this model needs {want}")
        drops = {raw.get(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
        if len(drops) != 1:
            raise UsageError(f"{where}: resid_pdrop, embd_pdrop and attn_pdrop differ ({sorted(drops)}); "
                             "this model has one dropout rate, make them equal")
        return cls(**values, dropout=drops.pop(), layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5))


def _init(module: nn.Module, residual_std: float) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, LayerNorm 1/0, and the
    residual output projections (``c_proj``) at std 0.02 / sqrt(2 * n_layer)."""
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            std = residual_std if name.endswith("c_proj") else INIT_STD
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if getattr(sub, "bias", None) is not None:
                nn.init.zeros_(sub.bias)


class GPTEmbedding(nn.Module):
    """(input_ids,) -> hidden: token plus position embeddings, then dropout."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.dropout = config.dropout
        _init(self, INIT_STD)

    def parallelize(self, ctx) -> None:
        """Tensor parallelism: the token embedding split by vocabulary; positions replicated."""
        from mpitrain.tp.layers import VocabParallelEmbedding

        self.wte = VocabParallelEmbedding.from_dense(self.wte, ctx.tp_comm)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.wpe.num_embeddings:
            raise UsageError(f"GPT embed: sequence length {length} exceeds n_positions={self.wpe.num_embeddings}; "
                             "use shorter sequences or a model with more positions")
        x = self.wte(input_ids) + self.wpe.weight[:length]
        return dropout(x, self.dropout, self.training, "embed")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused qkv projection (HF's ``attn``)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head           # heads on this rank (all, unless split by tp)
        self.head_dim = config.n_embd // config.n_head
        self.head_start = 0                   # global index of this rank's first head
        self.dropout = config.dropout

    def parallelize(self, ctx) -> None:
        """Tensor parallelism: split by heads -- q, k and v column-parallel (each of the
        fused projection's three blocks split), the output projection row-parallel."""
        from mpitrain.tp.layers import ColumnParallelLinear, RowParallelLinear

        self.c_attn = ColumnParallelLinear.from_dense(self.c_attn, ctx.tp_comm, chunks=3)
        self.c_proj = RowParallelLinear.from_dense(self.c_proj, ctx.tp_comm)
        self.n_head //= ctx.tp_size
        self.head_start = ctx.tp_rank * self.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.c_attn(x).view(b, t, 3, self.n_head, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)          # each [b, heads, t, head_dim]
        y = attention(q, k, v, self.dropout, self.training, causal=True, head_start=self.head_start)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))


class MLP(nn.Module):
    """c_fc (4 * C) -> tanh-approximated GELU ("gelu_new") -> c_proj."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def parallelize(self, ctx) -> None:
        """Tensor parallelism: c_fc column-parallel, c_proj row-parallel."""
        from mpitrain.tp.layers import ColumnParallelLinear, RowParallelLinear

        self.c_fc = ColumnParallelLinear.from_dense(self.c_fc, ctx.tp_comm)
        self.c_proj = RowParallelLinear.from_dense(self.c_proj, ctx.tp_comm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPTBlock(nn.Module):
    """hidden -> hidden: x + attn(ln_1(x)), then x + mlp(ln_2(x)) (residual dropout on each)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps)
        self.mlp = MLP(config)
        self.dropout = config.dropout
        _init(self, INIT_STD / math.sqrt(2 * config.n_layer))

    def parallelize(self, ctx) -> None:
        """Tensor parallelism: attention and MLP split; LayerNorms replicated."""
        self.attn.parallelize(ctx)
        self.mlp.parallelize(ctx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + dropout(self.attn(self.ln_1(x)), self.dropout, self.training, "attn_out")
        return x + dropout(self.mlp(self.ln_2(x)), self.dropout, self.training, "mlp_out")


class GPTHead(nn.Module):
    """hidden -> logits: final LayerNorm, then the (tied) output embedding."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        _init(self, INIT_STD)

    def parallelize(self, ctx) -> None:
        """Tensor parallelism: the output embedding split by vocabulary (padded to a
        multiple of tp, padding logits -inf); each rank returns its logits' slice, for
        `VocabParallelCrossEntropy`. ln_f is replicated."""
        from mpitrain.tp.layers import ColumnParallelLinear

        self.lm_head = ColumnParallelLinear.from_dense(self.lm_head, ctx.tp_comm, padded=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))


def layer_names(config: GPTConfig) -> list[str]:
    return ["embed"] + [f"block.{i}" for i in range(config.n_layer)] + ["head"]


def _make(name: str, config: GPTConfig) -> nn.Module:
    return {"embed": GPTEmbedding, "head": GPTHead}.get(name, GPTBlock)(config)


def parameter_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Global parameter name -> shape for the whole model (built on the meta device)."""
    with torch.device("meta"):
        modules = {name: _make(name, config) for name in ("embed", "block", "head")}
    return {f"{layer}.{pname}": tuple(t.shape) for layer in layer_names(config)
            for pname, t in modules[layer.split(".")[0]].state_dict().items()}


def _load(name: str, module: nn.Module, weights: Mapping) -> None:
    """Copy this layer's tensors (``f"{name}.{param}"``) from `weights` into `module`."""
    with torch.no_grad():
        for pname, target in module.state_dict(keep_vars=True).items():
            key = f"{name}.{pname}"
            if key not in weights and key == TIED_WEIGHTS[0][1]:
                key = TIED_WEIGHTS[0][0]  # the tied output embedding starts as the input embedding
            if key not in weights:
                raise UsageError(f"GPT weights: no tensor {key!r}; give a complete state of this model")
            value = torch.as_tensor(weights[key])
            if tuple(value.shape) != tuple(target.shape):
                raise UsageError(f"GPT weights: {key} has shape {list(value.shape)}, the config implies "
                                 f"{list(target.shape)}; load with the config the weights were made with")
            target.copy_(value)


def gpt_layers(config: GPTConfig, weights: Mapping[str, torch.Tensor] | None = None) -> list[LayerSpec]:
    """The model as pipeline layers.

    weights: None (fresh GPT-2 initialisation, seeded per layer by `build_layer`) or a
    mapping global name -> tensor. Each builder reads only its own layer's names, so a
    lazy mapping need only yield those. ``head.lm_head.weight`` may be omitted: it is
    then set from ``embed.wte.weight`` (the weights are tied).
    """
    if weights is not None:
        unknown = sorted(set(weights) - set(parameter_shapes(config)))
        if unknown:
            raise UsageError(f"GPT weights: unexpected names {unknown[:3]}; expected our global names "
                             "(e.g. 'block.0.attn.c_attn.weight'; convert Hugging Face names with hf_export)")

    def builder(name: str):
        def build() -> nn.Module:
            module = _make(name, config)
            if weights is not None:
                _load(name, module, weights)
            return module
        return build

    return [LayerSpec(name, builder(name)) for name in layer_names(config)]


def tie_in_place(layers) -> None:
    """Single-process use: copy the embed layer's ``wte`` into the head's ``lm_head``.

    `layers`: the built modules in order (an `GPTEmbedding` first, a `GPTHead` last).
    The engine does this itself (`TIED_WEIGHTS`) for pipelined runs.
    """
    layers = list(layers)
    if not (layers and isinstance(layers[0], GPTEmbedding) and isinstance(layers[-1], GPTHead)):
        raise UsageError("tie_in_place: give the whole model's built layers, embed first and head last")
    with torch.no_grad():
        layers[-1].lm_head.weight.copy_(layers[0].wte.weight)
