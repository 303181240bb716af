"""Export to and import from the Hugging Face format."""

from minillama.export.hf import load_hf, save_hf
from minillama.model.config import config_from_hf_dict, config_to_hf_dict

__all__ = ["config_from_hf_dict", "config_to_hf_dict", "load_hf", "save_hf"]
