"""The named-entity recognition task: CoNLL reading, WordPiece tokenization, HDF5
preparation, lazy batched reading, a synthetic corpus, seqeval metrics, and the
BERT token classifier with Hugging Face import and export.

Names are imported on first use, so `prepare` does not pay for importing torch."""
from importlib import import_module

_HOME = {
    "Sentence": "conll", "iter_conll": "conll", "read_conll": "conll",
    "IGNORE": "tokenize", "WordPieceTokenizer": "tokenize", "load_tokenizer": "tokenize",
    "collect_labels": "prepare", "check_tags": "prepare", "prepare_split": "prepare",
    "prepare_all": "prepare",
    "NerH5Dataset": "dataset",
    "ner_report": "metrics", "align_predictions": "metrics",
    "write_synthetic_corpus": "synthetic", "write_vocab": "synthetic",
    "BertConfig": "bert", "BertEmbeddings": "bert", "BertEncoderLayer": "bert",
    "BertTokenClassifierHead": "bert", "bert_token_classifier_layers": "bert", "layer_names": "bert",
    "parameter_shapes": "bert",
    "export_hf": "hf_export", "load_exported": "hf_export",
    "DEFAULT_MODEL": "hf_weights", "HFWeights": "hf_weights", "global_to_hf": "hf_weights",
    "hf_to_global": "hf_weights", "pretrained_token_classifier": "hf_weights", "read_labels": "hf_weights",
    "resolve_model_dir": "hf_weights",
}
__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(import_module(f"mpitrain.tasks.ner.{_HOME[name]}"), name)
    raise AttributeError(f"module 'mpitrain.tasks.ner' has no attribute {name!r}")
