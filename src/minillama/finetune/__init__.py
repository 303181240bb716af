"""Fine-tuning through the one training loop: SFT with the ChatML assistant mask, LoRA adapters in
PEFT's format, and sequence classification. See docs/finetuning.md.

The torch-based modules load on first use of their names, so `minillama --help` stays fast.
"""

from minillama.lazy import lazy_attributes

_NAMES = {
    "LoRAConfig": "minillama.finetune.lora",
    "LoRALinear": "minillama.finetune.lora",
    "add_lora": "minillama.finetune.lora",
    "merge_lora": "minillama.finetune.lora",
    "load_adapter": "minillama.finetune.lora",
    "write_adapter_dir": "minillama.finetune.lora",
    "SFTSettings": "minillama.finetune.sft",
    "sft": "minillama.finetune.sft",
    "sft_loss": "minillama.finetune.sft",
    "merge_adapter": "minillama.finetune.sft",
    "SFT_DATASETS": "minillama.finetune.sft_data",
    "load_conversations": "minillama.finetune.sft_data",
    "tokenize_conversations": "minillama.finetune.sft_data",
    "ClassifySettings": "minillama.finetune.classify",
    "train_classifier": "minillama.finetune.classify",
    "evaluate_saved_classifier": "minillama.finetune.classify",
}

__all__ = list(_NAMES)
__getattr__ = lazy_attributes(__name__, _NAMES)  # torch loads on first use
