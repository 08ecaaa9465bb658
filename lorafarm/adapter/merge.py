"""``lorafarm merge``: the base with the adapter folded in, written as an HF directory."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..errors import AdapterError
from ..storage import is_remote, normalize
from .save import pull


def merge_adapter(adapter: str, outdir: str, base: str | None = None, scale: float = 1.0) -> Path:
    from peft import PeftModel

    from ..model import load_base, load_tokenizer, resolve_base

    with tempfile.TemporaryDirectory(prefix="lorafarm-merge-") as tmp:
        local = Path(tmp) / "adapter"
        src = normalize(adapter)
        manifest = pull(src, local)
        base_name = base or manifest["base_model"]
        base_dir = resolve_base(base_name)
        try:
            model = PeftModel.from_pretrained(load_base(base_dir), str(local))
        except RuntimeError as e:  # PEFT's load_state_dict: the adapter's shapes are not the base's
            if "size mismatch" not in str(e):
                raise
            raise AdapterError(
                f"adapter {adapter} (trained on base {manifest.get('base_model')!r}) does not fit base "
                f"{base_name!r}: LoRA shapes differ — use the base it was trained on (drop --base)"
            ) from None
        if scale != 1.0:
            for module in model.modules():
                if hasattr(module, "scaling") and isinstance(module.scaling, dict):
                    for name in module.scaling:
                        module.scaling[name] *= scale
        merged = model.merge_and_unload()
        out = Path(outdir)
        merged.save_pretrained(out, safe_serialization=True)
        load_tokenizer(base_dir).save_pretrained(out)
    return out


__all__ = ["merge_adapter", "is_remote"]
