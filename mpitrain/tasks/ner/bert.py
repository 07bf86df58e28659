"""A BERT encoder with a token-classification head, as pipeline layers.

Layers (any partition of this list works):

    "embeddings"  (input_ids, attention_mask) -> (hidden, attention_mask)
    "encoder.i"   (hidden, attention_mask)    -> (hidden, attention_mask)
    "classifier"  (hidden, attention_mask)    -> logits [b, L, num_labels]

`attention_mask` is a LongTensor [b, L] with 1 for real tokens; each encoder layer
turns it into an additive attention bias. Parameter names mirror Hugging Face's
BERT (``encoder.3.attention.self.query.weight`` is HF's
``bert.encoder.layer.3.attention.self.query.weight``), see `hf_weights`.

Tensor parallelism (tp > 1, `parallelize`): word embeddings split by
vocabulary, attention by heads, the feed-forward column- then row-parallel
(see `BertEncoderLayer.parallelize`). The classifier stays replicated: it is
small (hidden x labels) and its full logits are what the NER metrics read.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mpitrain.dropout import attention, dropout
from mpitrain.errors import UsageError
from mpitrain.layers import LayerSpec
from mpitrain.tp.ops import copy_to_group

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    classifier_dropout: float | None = None

    def __post_init__(self):
        where = "BertConfig"
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{where}: {name}={value!r} must be a positive integer; fix the model config")
        if self.hidden_size % self.num_attention_heads:
            raise UsageError(f"{where}: hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}; choose sizes that divide")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise UsageError(f"{where}: pad_token_id={self.pad_token_id!r} is outside the vocabulary "
                             f"(vocab_size={self.vocab_size}); fix the model config")
        if self.hidden_act not in _ACTIVATIONS:
            raise UsageError(f"{where}: hidden_act={self.hidden_act!r} is not supported; use one of "
                             f"{', '.join(sorted(_ACTIVATIONS))}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
                raise UsageError(f"{where}: {name}={value!r} must be in [0, 1); fix the model config")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_json(cls, path: str | Path) -> "BertConfig":
        """Read a Hugging Face `config.json` (or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise UsageError(f"{path}: no config.json; point the model setting at a Hugging Face model directory")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read as JSON ({exc}); restore a valid config.json") from exc
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise UsageError(f"{path}: model_type {model_type!r} is not supported; use a BERT model (model_type 'bert')")
        pos_type = raw.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise UsageError(f"{path}: position_embedding_type {pos_type!r} is not supported; "
                             "use a BERT with absolute position embeddings")
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if n not in raw]
        if missing:
            raise UsageError(f"{path}: missing {', '.join(missing)}; this is not a complete BERT config.json")
        try:
            return cls(**{k: v for k, v in raw.items() if k in fields})
        except UsageError as exc:
            raise UsageError(f"{path}: {exc}") from exc

    def to_hf_dict(self) -> dict:
        """The Hugging Face `config.json` fields (without labels / architectures)."""
        out = dataclasses.asdict(self)
        out.update(model_type="bert", position_embedding_type="absolute")
        return out


def _init_linear(linear: nn.Linear, std: float) -> None:
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    nn.init.zeros_(linear.bias)


def _init_embedding(emb: nn.Embedding, std: float) -> None:
    nn.init.normal_(emb.weight, mean=0.0, std=std)
    if emb.padding_idx is not None:
        with torch.no_grad():
            emb.weight[emb.padding_idx].zero_()


class _Group(nn.Module):
    """A parameter container mirroring HF's module nesting (no forward)."""

    def __init__(self, children: dict[str, nn.Module]):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


def _dense_norm(n_in: int, n_out: int, eps: float) -> _Group:
    return _Group({"dense": nn.Linear(n_in, n_out), "LayerNorm": nn.LayerNorm(n_out, eps=eps)})


class BertEmbeddings(nn.Module):
    """(input_ids, attention_mask) -> (hidden, attention_mask). Token types are all 0."""

    def __init__(self, config: BertConfig):
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = config.hidden_dropout_prob
        for emb in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            _init_embedding(emb, config.initializer_range)

    def parallelize(self, ctx) -> None:
        """Tensor parallelism: word embeddings split by vocabulary; the rest replicated."""
        from mpitrain.tp.layers import VocabParallelEmbedding

        self.word_embeddings = VocabParallelEmbedding.from_dense(self.word_embeddings, ctx.tp_comm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise UsageError(f"BERT embeddings: sequence length {length} exceeds max_position_embeddings="
                             f"{self.position_embeddings.num_embeddings}; lower the max sequence length")
        x = self.word_embeddings(input_ids)
        x = x + (self.position_embeddings.weight[:length] + self.token_type_embeddings.weight[0])
        x = self.LayerNorm(x)
        x = dropout(x, self.dropout, self.training, "embed")
        return x, attention_mask


def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """[b, L] 1/0 mask -> additive bias [b, 1, 1, L], or None when nothing is masked."""
    if bool(attention_mask.all()):
        return None
    bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
    bias.masked_fill_(attention_mask == 0, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def _unpad(rows: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if rows is None else x.index_select(0, rows)


def _pad(rows: torch.Tensor | None, x: torch.Tensor, num_rows: int) -> torch.Tensor:
    return x if rows is None else x.new_zeros(num_rows, x.shape[1]).index_copy(0, rows, x)


class BertEncoderLayer(nn.Module):
    """(hidden, attention_mask) -> (hidden, attention_mask): self-attention then feed-forward.

    The position-wise parts (projections, feed-forward, layer norms) run on the real
    tokens only; padding positions come out as zeros. Real tokens never attend to
    padding, so their values are those of the padded computation.
    """

    def __init__(self, config: BertConfig):
        super().__init__()
        h, eps, std = config.hidden_size, config.layer_norm_eps, config.initializer_range
        self.attention = _Group({
            "self": _Group({"query": nn.Linear(h, h), "key": nn.Linear(h, h), "value": nn.Linear(h, h)}),
            "output": _dense_norm(h, h, eps),
        })
        self.intermediate = _Group({"dense": nn.Linear(h, config.intermediate_size)})
        self.output = _dense_norm(config.intermediate_size, h, eps)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _init_linear(module, std)
        self.num_heads = config.num_attention_heads   # heads on this rank (all, unless split by tp)
        self.head_dim = config.head_dim
        self.head_start = 0                           # global index of this rank's first head
        self.hidden_dropout = config.hidden_dropout_prob
        self.attention_dropout = config.attention_probs_dropout_prob
        self.act = _ACTIVATIONS[config.hidden_act]
        self.tp_comm = None

    def parallelize(self, ctx) -> None:
        """Tensor parallelism: attention split by heads (query, key, value
        column-parallel, its output dense row-parallel), the feed-forward column- then
        row-parallel; LayerNorms and the biases after each row-parallel sum replicated."""
        from mpitrain.tp.layers import ColumnParallelLinear, RowParallelLinear

        comm = self.tp_comm = ctx.tp_comm
        sa = self.attention.get_submodule("self")
        for name in ("query", "key", "value"):
            setattr(sa, name, ColumnParallelLinear.from_dense(getattr(sa, name), comm))
        self.attention.output.dense = RowParallelLinear.from_dense(self.attention.output.dense, comm)
        self.intermediate.dense = ColumnParallelLinear.from_dense(self.intermediate.dense, comm)
        self.output.dense = RowParallelLinear.from_dense(self.output.dense, comm)
        self.num_heads //= ctx.tp_size
        self.head_start = ctx.tp_rank * self.num_heads

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        b, length, h = hidden.shape
        local = self.num_heads * self.head_dim
        bias = attention_bias(attention_mask, hidden.dtype)
        rows = None if bias is None else attention_mask.reshape(-1).nonzero().squeeze(1)
        x = _unpad(rows, hidden.reshape(b * length, h))

        sa = self.attention.get_submodule("self")
        weight = torch.cat((sa.query.weight, sa.key.weight, sa.value.weight))
        x_in = x if self.tp_comm is None else copy_to_group(x, self.tp_comm)
        qkv = F.linear(x_in, weight, torch.cat((sa.query.bias, sa.key.bias, sa.value.bias)))
        qkv = _pad(rows, qkv, b * length).view(b, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        ctx = attention(q, k, v, self.attention_dropout, self.training, mask=bias, head_start=self.head_start)
        ctx = _unpad(rows, ctx.transpose(1, 2).reshape(b * length, local))

        # the batch row and token of each (unpadded) row: dropout masks by logical position
        flat = rows if rows is not None else torch.arange(b * length, device=hidden.device)
        where = {"rows": flat // length, "coords": [flat % length, None]}
        out = self.attention.output
        x = out.LayerNorm(dropout(out.dense(ctx), self.hidden_dropout, self.training, "attn_out", **where) + x)
        y = self.act(self.intermediate.dense(x))
        out = self.output
        y = out.LayerNorm(dropout(out.dense(y), self.hidden_dropout, self.training, "ffn_out", **where) + x)
        return _pad(rows, y, b * length).view(b, length, h), attention_mask


class BertTokenClassifierHead(nn.Module):
    """(hidden, attention_mask) -> logits [b, L, num_labels] (padding positions: unspecified)."""

    def __init__(self, config: BertConfig, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.weight = nn.Parameter(torch.empty(num_labels, config.hidden_size))
        self.bias = nn.Parameter(torch.zeros(num_labels))
        nn.init.normal_(self.weight, mean=0.0, std=config.initializer_range)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return F.linear(dropout(hidden, self.dropout, self.training, "classifier"), self.weight, self.bias)


def layer_names(config: BertConfig) -> list[str]:
    return ["embeddings"] + [f"encoder.{i}" for i in range(config.num_hidden_layers)] + ["classifier"]


def parameter_shapes(config: BertConfig, num_labels: int) -> dict[str, tuple[int, ...]]:
    """Global parameter name -> shape for the whole model (built on the meta device)."""
    with torch.device("meta"):
        embeddings, encoder = BertEmbeddings(config), BertEncoderLayer(config)
        head = BertTokenClassifierHead(config, num_labels, 0.0)
    layers = [("embeddings", embeddings)]
    layers += [(f"encoder.{i}", encoder) for i in range(config.num_hidden_layers)]
    layers.append(("classifier", head))
    return {f"{layer}.{pname}": tuple(t.shape)
            for layer, module in layers for pname, t in module.state_dict().items()}


def bert_token_classifier_layers(config: BertConfig, num_labels: int, weights=None,
                                 classifier_dropout: float | None = None,
                                 load_classifier: bool | None = None) -> list[LayerSpec]:
    """The model as pipeline layers.

    weights: None (fresh init, e.g. a small BERT from scratch), a model directory
    (path), or an `HFWeights` reader. Each layer's builder reads only that layer's
    tensors. The classifier is initialised fresh (seeded by `build_layer`) unless the
    weights hold a `classifier.*` head: ``load_classifier=None`` loads it when present,
    ``True`` requires it, ``False`` always starts fresh.
    classifier_dropout: overrides ``config.classifier_dropout`` (default: hidden dropout).
    """
    from mpitrain.tasks.ner.hf_weights import HFWeights

    if not isinstance(num_labels, int) or num_labels < 1:
        raise UsageError(f"BERT token classifier: num_labels={num_labels!r} must be a positive integer; "
                         "check the label set")
    reader = HFWeights(weights) if isinstance(weights, (str, Path)) else weights
    if classifier_dropout is None:
        classifier_dropout = config.classifier_dropout
    if classifier_dropout is None:
        classifier_dropout = config.hidden_dropout_prob

    def builder(name: str, make, optional: bool = False):
        def build() -> nn.Module:
            module = make()
            if reader is not None:
                reader.load_layer(name, module, optional=optional)
            return module
        return build

    specs = [LayerSpec("embeddings", builder("embeddings", lambda: BertEmbeddings(config)))]
    for i in range(config.num_hidden_layers):
        specs.append(LayerSpec(f"encoder.{i}", builder(f"encoder.{i}", lambda: BertEncoderLayer(config))))
    make_head = lambda: BertTokenClassifierHead(config, num_labels, classifier_dropout)  # noqa: E731
    if load_classifier is False or reader is None:
        specs.append(LayerSpec("classifier", make_head))
    else:
        specs.append(LayerSpec("classifier", builder("classifier", make_head, optional=not load_classifier)))
    return specs
