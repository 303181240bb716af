"""The model for inference in pure NumPy: no torch needed to load a checkpoint and generate.

    from minillama.numpy_model import NumpyLlama, stream_text
    model = NumpyLlama.from_pretrained("runs/model")
    logits = model.forward([1, 2, 3])                      # (T, V) float32
    ids = model.generate([1, 2, 3], 50, temperature=0)     # greedy
    for piece in stream_text("runs/model", "Once upon a time", max_new_tokens=100, seed=0):
        print(piece, end="")

Same arithmetic as `minillama.model.MiniLlama` (float32 logits agree within 1e-4); see docs/numpy.md.
"""

from minillama.numpy_model.flash import flash_attention_forward
from minillama.numpy_model.mha import multi_head_attention_forward
from minillama.numpy_model.model import (
    NumpyKVCache,
    NumpyLlama,
    RotaryTables,
    apply_rotary,
    rms_norm,
    rope_inverse_frequencies,
)
from minillama.numpy_model.sampling import sample_next_token, sampling_probabilities
from minillama.numpy_model.text import decode_stream, load_tokenizer, stream_text
from minillama.numpy_model.weights import read_state

__all__ = [
    "NumpyKVCache", "NumpyLlama", "RotaryTables", "apply_rotary", "decode_stream", "flash_attention_forward",
    "load_tokenizer", "multi_head_attention_forward", "read_state", "rms_norm",
    "rope_inverse_frequencies", "sample_next_token", "sampling_probabilities", "stream_text",
]
