"""Write an adapter in standard PEFT format, publish it with its manifest, read it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from ..errors import AdapterError
from ..storage import MANIFEST, download_dir, publish_dir, read_manifest

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def save_peft(directory: Path, state: dict[str, torch.Tensor], peft_config, base_model_id: str) -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors``, exactly as PEFT writes them."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = peft_config.to_dict()
    config["base_model_name_or_path"] = base_model_id
    config["inference_mode"] = True
    for k, v in list(config.items()):
        if isinstance(v, set):
            config[k] = sorted(v)
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    return directory


def publish(local_dir: Path, adapter_uri: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Files first (each checked), manifest last: readers never see half an adapter."""
    return publish_dir(local_dir, adapter_uri, manifest)


def pull(adapter_uri: str, dest: str | Path, force: bool = False, what: str = "DEST") -> dict[str, Any]:
    """Copy a verified adapter to the local directory ``dest``; refuses an incomplete or corrupt
    one. ``dest`` must be new or empty (or ``force``: replaced whole); the copy is written beside
    it, checked against the manifest (written last), and renamed onto ``dest`` only when every
    file matches, so ``dest`` never holds a partial or mixed adapter."""
    from ..storage import check_output_dir, filesystem, output_dir, sha256_file

    check_output_dir(dest, force, what)  # before any download: nothing is fetched for a bad DEST
    manifest = read_manifest(adapter_uri, verify=True)
    names = sorted(manifest.get("files", {}))
    missing = [n for n in ADAPTER_FILES if n not in names]
    if missing:
        raise AdapterError(f"{adapter_uri}: manifest lists no {', '.join(missing)} — not a complete adapter")
    unsafe = [n for n in names if n in ("", ".", "..") or "/" in n or "\\" in n]
    if unsafe:  # an adapter is flat files; never write outside ``dest``
        raise AdapterError(f"{adapter_uri}: manifest names files outside the adapter ({', '.join(unsafe)}) — "
                           "refusing it")
    with output_dir(dest, force, what) as out:
        download_dir(adapter_uri, out, names)
        fs, _ = filesystem(str(out))
        for name in names:
            digest, size = sha256_file(fs, str(out / name))
            if digest != manifest["files"][name]["sha256"] or size != manifest["files"][name]["size"]:
                raise AdapterError(f"{dest}/{name}: sha256/size differ from the manifest after download — "
                                   "retry the pull")
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest
