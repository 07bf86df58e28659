"""Export a trained BERT token classifier as a Hugging Face model directory.

The directory holds `config.json` (architectures ["BertForTokenClassification"],
id2label/label2id), `model.safetensors` with HF tensor names (``bert.`` prefix) and the
tokenizer files, so ``transformers.AutoModelForTokenClassification.from_pretrained(dir)``
and ``AutoTokenizer.from_pretrained(dir)`` load it. `load_exported` reads it back.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mpitrain.atomic import staged_dir
from mpitrain.errors import UsageError
from mpitrain.tasks.ner.bert import BertConfig, parameter_shapes
from mpitrain.tasks.ner.hf_weights import PACKAGE_PREFIX, SAFETENSORS, HFWeights, global_to_hf, read_labels, \
    resolve_model_dir

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _tokenizer_dir(value: str | Path) -> Path:
    if str(value).startswith(PACKAGE_PREFIX):
        return resolve_model_dir(value, where="export tokenizer")
    path = Path(value).expanduser()
    if not ((path / "vocab.txt").is_file() or (path / "tokenizer.json").is_file()):
        raise UsageError(f"export: tokenizer directory {str(path)!r} has no vocab.txt or tokenizer.json; "
                         "give the directory of the model the tokenizer came from")
    return path


def _check_labels(labels: list[str], num_rows: int | None) -> list[str]:
    labels = [str(label) for label in labels]
    if len(set(labels)) != len(labels):
        raise UsageError(f"export: labels contain duplicates ({labels}); give each label once")
    if num_rows is not None and num_rows != len(labels):
        raise UsageError(f"export: {len(labels)} labels but the classifier has {num_rows} outputs; "
                         "export with the label list the model was trained with")
    return labels


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"export: {out_dir} exists and is not a directory; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"export: {out_dir} exists and is not empty; choose a new directory or allow overwrite")


def hf_config_dict(config: BertConfig, labels: list[str]) -> dict:
    out = config.to_hf_dict()
    out.update(
        architectures=["BertForTokenClassification"],
        id2label={str(i): label for i, label in enumerate(labels)},
        label2id={label: i for i, label in enumerate(labels)},
        dtype="float32",
    )
    return out


def export_hf(out_dir: str | Path, config: BertConfig, named_tensors: dict[str, torch.Tensor],
              labels: list[str], tokenizer_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a Hugging Face BertForTokenClassification directory; returns its path.

    named_tensors: our global names (``embeddings.*``, ``encoder.{i}.*``, ``classifier.*``)
    -> tensors, as gathered from all pipeline stages. The directory is written to a
    temporary sibling and renamed into place; an existing non-empty `out_dir` is
    replaced only with ``overwrite=True``.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir).expanduser()
    _check_target(out_dir, overwrite)
    head = named_tensors.get("classifier.weight")
    labels = _check_labels(labels, None if head is None else int(head.shape[0]))
    expected = parameter_shapes(config, len(labels))
    missing = [n for n in expected if n not in named_tensors]
    unknown = [n for n in named_tensors if n not in expected]
    if missing or unknown:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unknown[:3]}"
        raise UsageError(f"export: parameters do not match the BERT config ({what}); "
                         "export the full model with the config it was built from")
    for name, shape in expected.items():
        if tuple(named_tensors[name].shape) != shape:
            raise UsageError(f"export: {name} has shape {list(named_tensors[name].shape)}, the config implies "
                             f"{list(shape)}; export with the config the model was built from")
    tok_dir = _tokenizer_dir(tokenizer_dir)

    tensors = {global_to_hf(n): named_tensors[n].detach().to("cpu", copy=True).contiguous() for n in expected}
    with staged_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(config, labels), indent=2) + "\n")
        for fname in TOKENIZER_FILES:
            if (tok_dir / fname).is_file():
                shutil.copyfile(tok_dir / fname, tmp / fname)
        _check_target(out_dir, overwrite)
    return out_dir


def load_exported(model_dir: str | Path) -> tuple[BertConfig, list[str], HFWeights]:
    """(config, labels, weights reader) of an exported (or any HF token-classifier) directory.

    Build the model with ``bert_token_classifier_layers(config, len(labels), weights,
    load_classifier=True)``.
    """
    reader = HFWeights(model_dir)
    labels = read_labels(reader.model_dir)
    if labels is None:
        raise UsageError(f"{reader.model_dir}/config.json: no id2label; this is not a token-classifier export")
    return BertConfig.from_hf_json(reader.model_dir), labels, reader
