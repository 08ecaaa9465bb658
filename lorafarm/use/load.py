"""One base, several verified adapters on it as PEFT named adapters, each at any scale.

Adapters are pulled exactly as ``lorafarm pull`` does (manifest present, every file's sha256
matching), so a missing, half-published or corrupt adapter is refused with the same message.
Before PEFT sees them, every LoRA tensor's shape is checked against the base's layer, so an
adapter on the wrong base is refused with a message naming both rather than a PyTorch
size-mismatch traceback.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AdapterError

_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                  r"(?:\.weight)?$")


@dataclass
class Adapter:
    """A pulled adapter: ``name`` is its PEFT adapter name, ``label`` what users see."""

    name: str
    label: str
    uri: str
    local_dir: Path
    manifest: dict[str, Any]

    @property
    def spec(self) -> dict[str, Any]:
        return self.manifest.get("spec") or {}

    @property
    def format(self) -> str:
        if self.manifest.get("chat"):
            return "chat"
        return (self.spec.get("dataset") or {}).get("format", "text")


@dataclass
class Session:
    """The base model (loaded once) with every adapter attached under its own name."""

    model: Any  # peft.PeftModel
    tokenizer: Any
    base_label: str
    base_dir: Path
    adapters: list[Adapter]
    device: str
    warnings: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def active(self, adapter: Adapter | None, scale: float = 1.0) -> Iterator[None]:
        """Within the block the model is the base alone (``adapter=None``) or the base with
        ``adapter`` at ``scale`` × α/r. The files are never touched; the scale is reset after."""
        if adapter is None:
            with self.model.disable_adapter():
                yield
            return
        self.model.set_adapter(adapter.name)
        set_scale(self.model, adapter.name, scale)
        try:
            yield
        finally:
            set_scale(self.model, adapter.name, 1.0)


def set_scale(model, adapter_name: str, scale: float) -> int:
    """Set every LoRA layer of ``adapter_name`` to ``scale`` × its trained α/r (rsLoRA: α/√r)."""
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and adapter_name in module.scaling:
            module.set_scale(adapter_name, float(scale))
            n += 1
    if n == 0:
        raise AdapterError(f"adapter {adapter_name!r} has no LoRA layers in the loaded model")
    return n


def _label(uri: str, manifest: dict[str, Any], taken: set[str]) -> str:
    label = manifest.get("job_id") or Path(uri.rstrip("/")).name or uri
    base, i = label, 2
    while label in taken:
        label, i = f"{base}#{i}", i + 1
    taken.add(label)
    return label


def pull_adapters(uris: list[str], workdir: Path) -> list[Adapter]:
    """Every adapter pulled (sha256-verified) into ``workdir/a<i>``."""
    from ..adapter.save import pull

    out: list[Adapter] = []
    taken: set[str] = set()
    for i, uri in enumerate(uris):
        local = workdir / f"a{i}"
        manifest = pull(uri, local)
        out.append(Adapter(f"a{i}", _label(uri, manifest, taken), uri, local, manifest))
    return out


def choose_base(adapters: list[Adapter], base: str | None) -> str:
    if base:
        return base
    bases = {a.manifest.get("base_model") for a in adapters}
    if None in bases:
        missing = [a.label for a in adapters if not a.manifest.get("base_model")]
        raise AdapterError(f"the manifest of {', '.join(missing)} names no base_model — pass --base")
    if len(bases) > 1:
        listed = ", ".join(f"{a.label} ({a.manifest['base_model']})" for a in adapters)
        raise AdapterError(f"the adapters were trained on different bases: {listed} — one run shares one base; "
                           "try them separately, or pass --base")
    return bases.pop()


def shape_problems(adapter_dir: Path, base_model) -> tuple[list[str], int]:
    """(problems, layers checked): every LoRA tensor against the base layer it adapts."""
    from safetensors import safe_open

    problems: list[str] = []
    layers: dict[str, dict[str, tuple[int, ...]]] = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            m = _KEY.match(key)
            if m:
                layers.setdefault(m["module"], {})[m["kind"]] = tuple(f.get_slice(key).get_shape())
    for path, kinds in sorted(layers.items()):
        try:
            module = base_model.get_submodule(path)
        except AttributeError:
            problems.append(f"{path}: no such layer in the base")
            continue
        weight = getattr(module, "weight", None)
        if weight is None:
            continue
        if "lora_A" in kinds and "lora_B" in kinds:
            in_f = getattr(module, "in_features", None)
            out_f = getattr(module, "out_features", None)
            if in_f is None or out_f is None:
                out_f, in_f = tuple(weight.shape)[:2]
            a_in, b_out = kinds["lora_A"][-1], kinds["lora_B"][0]
            if (a_in, b_out) != (in_f, out_f):
                problems.append(f"{path}: adapter expects in={a_in} out={b_out}, base has in={in_f} out={out_f}")
        elif "lora_embedding_A" in kinds and "lora_embedding_B" in kinds:
            vocab, dim = tuple(weight.shape)[:2]
            a_vocab, b_dim = kinds["lora_embedding_A"][-1], kinds["lora_embedding_B"][0]
            if (a_vocab, b_dim) != (vocab, dim):
                problems.append(f"{path}: adapter expects vocab={a_vocab} dim={b_dim}, base has vocab={vocab} dim={dim}")
    return problems, len(layers)


def check_fits(adapter: Adapter, base_model, base_label: str) -> None:
    problems, checked = shape_problems(adapter.local_dir, base_model)
    trained_on = adapter.manifest.get("base_model", "?")
    if checked == 0:
        raise AdapterError(f"adapter {adapter.label} ({adapter.uri}) holds no LoRA tensors — re-run its job")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; ... {len(problems) - 3} more" if len(problems) > 3 else "")
        raise AdapterError(
            f"adapter {adapter.label} (trained on base {trained_on!r}) does not fit base {base_label!r}: "
            f"{len(problems)} of {checked} adapted layers differ ({shown}) — use the base it was trained on "
            f"(drop --base, or --base {trained_on})"
        )


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def open_session(uris: list[str], workdir: Path, base: str | None = None, device: str = "auto",
                 dtype: str = "auto", trust_remote_code: bool = False) -> Session:
    """Pull and check every adapter, load the base once, attach each adapter by name.

    A base that needs its repository's own code runs it only when the user says so
    (``trust_remote_code``): an adapter's manifest is someone else's word, never consent."""
    import torch
    from peft import PeftModel

    from ..model import load_base, load_tokenizer, resolve_base, weights_digest

    if not uris:
        raise AdapterError("no adapter given — name one (a store URI, a local directory or a job id)")
    adapters = pull_adapters(uris, workdir)
    base_label = choose_base(adapters, base)
    base_dir = resolve_base(base_label)
    wants = [a.label for a in adapters if a.spec.get("trust_remote_code")]
    if wants and not trust_remote_code:
        raise AdapterError(f"adapter {wants[0]} was trained with trust_remote_code: its base {base_label!r} runs code "
                           "from its own repository — pass --trust-remote-code if you trust that base")
    trust = bool(wants) and trust_remote_code
    device = pick_device(device)
    torch_dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
                   "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    tokenizer = load_tokenizer(base_dir, trust_remote_code=trust)
    base_model = load_base(base_dir, dtype=torch_dtype, trust_remote_code=trust)
    warnings: list[str] = []
    digest = None
    for a in adapters:
        check_fits(a, base_model, base_label)
        want = a.manifest.get("base_weights_digest")
        if want:
            digest = digest or weights_digest(base_dir)
            if digest != want:
                warnings.append(f"base {base_label!r} has the right shapes but not the weights adapter {a.label} "
                                f"was trained on ({a.manifest.get('base_model')!r}) — outputs may differ from training")
    model = PeftModel.from_pretrained(base_model, str(adapters[0].local_dir), adapter_name=adapters[0].name)
    for a in adapters[1:]:
        model.load_adapter(str(a.local_dir), adapter_name=a.name)
    model.to(device).eval()
    model.config.use_cache = True
    return Session(model, tokenizer, base_label, base_dir, adapters, device, warnings)


def quiet_loading() -> None:
    """No weight-loading progress bars or library deprecation chatter around the caller's tables."""
    import warnings

    from transformers.utils import logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.disable_progress_bar()
    logging.set_verbosity_error()


@contextlib.contextmanager
def session(uris: list[str], base: str | None = None, device: str = "auto", dtype: str = "auto",
            trust_remote_code: bool = False) -> Iterator[Session]:
    with tempfile.TemporaryDirectory(prefix="lorafarm-use-") as tmp:
        yield open_session(uris, Path(tmp), base=base, device=device, dtype=dtype,
                           trust_remote_code=trust_remote_code)


def adapter_config(adapter: Adapter) -> dict[str, Any]:
    return json.loads((adapter.local_dir / "adapter_config.json").read_text())
