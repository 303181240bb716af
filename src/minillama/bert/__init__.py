"""BERT: the encoder-only masked language model (docs/bert.md).

`minillama.bert.config` is plain Python; the torch modules load on first use of their names.
"""

from minillama.bert.config import BERT_PRESETS, BertConfig, load_bert_config, model_family
from minillama.lazy import lazy_attributes

_TORCH_NAMES = {
    "BertForMaskedLM": "minillama.bert.model",
    "BertForSequenceClassification": "minillama.bert.model",
    "BertModel": "minillama.bert.model",
}

__all__ = ["BERT_PRESETS", "BertConfig", "load_bert_config", "model_family", *_TORCH_NAMES]
__getattr__ = lazy_attributes(__name__, _TORCH_NAMES)
