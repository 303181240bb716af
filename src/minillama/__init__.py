"""minillama: a small LLaMA/Qwen2-style language model, from tokenizer to serving."""

__version__ = "0.1.0"
