"""Export to and import from the Hugging Face format (torch loads on first use of save_hf / load_hf)."""

from minillama.lazy import lazy_attributes
from minillama.model.config import config_from_hf_dict, config_to_hf_dict

__all__ = ["config_from_hf_dict", "config_to_hf_dict", "load_hf", "save_hf"]
__getattr__ = lazy_attributes(__name__, {"load_hf": "minillama.export.hf", "save_hf": "minillama.export.hf"})
