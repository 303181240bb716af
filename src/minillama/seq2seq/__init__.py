"""The original encoder–decoder Transformer ("Attention Is All You Need"), named and laid out as
transformers' `MarianMTModel`, with decoding (greedy, beam, sampling), Tatoeba English–Chinese data
and translation training through the one Trainer. See docs/seq2seq.md."""

from minillama.lazy import lazy_attributes

_NAMES = {
    "Seq2SeqConfig": "minillama.seq2seq.config",
    "config_from_preset": "minillama.seq2seq.config",
    "MiniSeq2Seq": "minillama.seq2seq.model",
    "DecoderCache": "minillama.seq2seq.model",
}

__all__ = sorted(_NAMES)
__getattr__ = lazy_attributes(__name__, _NAMES)  # torch loads on first use
