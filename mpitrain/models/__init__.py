"""Model definitions as pipeline layers (see `mpitrain.layers`)."""
from mpitrain.models.bert import (BertConfig, BertEmbeddings, BertEncoderLayer, BertTokenClassifierHead,
                                  bert_token_classifier_layers, layer_names, parameter_shapes)
from mpitrain.models.hf_export import export_hf, load_exported
from mpitrain.models.hf_weights import (DEFAULT_MODEL, HFWeights, global_to_hf, hf_to_global,
                                        pretrained_token_classifier, read_labels, resolve_model_dir)

__all__ = [
    "BertConfig", "BertEmbeddings", "BertEncoderLayer", "BertTokenClassifierHead",
    "bert_token_classifier_layers", "layer_names", "parameter_shapes",
    "export_hf", "load_exported",
    "DEFAULT_MODEL", "HFWeights", "global_to_hf", "hf_to_global", "pretrained_token_classifier", "read_labels",
    "resolve_model_dir",
]
