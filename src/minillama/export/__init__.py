"""Export to and import from the Hugging Face format (torch loads on first use of save_hf / load_hf)."""

from minillama.model.config import config_from_hf_dict, config_to_hf_dict

__all__ = ["config_from_hf_dict", "config_to_hf_dict", "load_hf", "save_hf"]


def __getattr__(name: str):
    if name in ("load_hf", "save_hf"):
        from minillama.export import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'minillama.export' has no attribute {name!r}")
