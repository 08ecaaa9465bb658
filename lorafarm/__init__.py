"""lorafarm: multi-tenant LoRA fine-tuning on Ray + DeepSpeed ZeRO, publishing PEFT adapters."""

__version__ = "0.1.0"
