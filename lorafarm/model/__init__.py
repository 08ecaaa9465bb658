"""Base models (built-in, local, s3://, local HF cache) and LoRA through PEFT."""

from .load import cache_root, load_base, load_tokenizer, resolve_base, weights_digest
from .lora import apply_lora, linear_module_names, lora_config, missing_targets
from .tiny import TINY_NAME

__all__ = [
    "TINY_NAME",
    "apply_lora",
    "cache_root",
    "linear_module_names",
    "load_base",
    "load_tokenizer",
    "lora_config",
    "missing_targets",
    "resolve_base",
    "weights_digest",
]
