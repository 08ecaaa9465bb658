"""DeepSpeed ZeRO: config from the spec, engine with LoRA-only optimizer state."""

from .config import ds_config
from .engine import base_optimizer, build_engine, memory_report, optimizer_param_numel, optimizer_state_bytes

__all__ = [
    "base_optimizer",
    "build_engine",
    "ds_config",
    "memory_report",
    "optimizer_param_numel",
    "optimizer_state_bytes",
]
