"""``lorafarm merge``: the base with the adapter folded in, written as an HF directory.

OUTDIR must be new or empty (``force``: replaced whole); the model is written beside it and
renamed onto it when complete, with normal file modes (see :mod:`lorafarm.storage.outdir`).
A scale that is not finite, or one that makes any merged weight non-finite, is refused and
nothing is written."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from ..errors import AdapterError, SpecError
from ..storage import check_output_dir, is_remote, normalize, output_dir
from .save import pull


def check_scale(scale: float, flag: str = "--scale") -> float:
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise SpecError([f"{flag} {scale}: must be a finite number (1 = as trained, 0 = the base) — "
                         f"e.g. {flag} 0.5"])
    return float(scale)


def merge_adapter(adapter: str, outdir: str, base: str | None = None, scale: float = 1.0,
                  force: bool = False, trust_remote_code: bool = False) -> Path:
    """A manifest saying its job trusted remote code is someone else's word, never consent: the
    base's own code runs only with ``trust_remote_code`` (``--trust-remote-code``)."""
    scale = check_scale(scale)
    out = check_output_dir(outdir, force, "OUTDIR")

    from peft import PeftModel

    from ..model import load_base, load_tokenizer, resolve_base

    with tempfile.TemporaryDirectory(prefix="lorafarm-merge-") as tmp:
        local = Path(tmp) / "adapter"
        src = normalize(adapter)
        manifest = pull(src, local, what="ADAPTER")
        base_name = base or manifest["base_model"]
        if (manifest.get("spec") or {}).get("trust_remote_code") and not trust_remote_code:
            raise AdapterError(f"adapter {adapter} was trained with trust_remote_code: its base {base_name!r} runs "
                               "code from its own repository — pass --trust-remote-code if you trust that base")
        base_dir = resolve_base(base_name)
        try:
            model = PeftModel.from_pretrained(load_base(base_dir, trust_remote_code=trust_remote_code), str(local))
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
        bad = [n for n, p in merged.named_parameters() if not bool(p.isfinite().all())]
        if bad:
            raise SpecError([f"--scale {scale:g}: the merged weights are not finite ({len(bad)} tensors, e.g. "
                             f"{bad[0]}) — use a smaller scale"])
        with output_dir(out, force, "OUTDIR") as tmp_out:
            merged.save_pretrained(tmp_out, safe_serialization=True)
            load_tokenizer(base_dir, trust_remote_code=trust_remote_code).save_pretrained(tmp_out)
    return out


__all__ = ["check_scale", "merge_adapter", "is_remote"]
