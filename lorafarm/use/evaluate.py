"""``lorafarm eval``: loss, perplexity and (for labelled sets) accuracy, base vs adapters.

Loss is what training minimised: examples are encoded by :func:`lorafarm.data.formats.encode`
in the format of the job (masks included: completion only, assistant turns only, ...) at the
job's ``seq_len``, and the loss is the mean cross-entropy over every label token of the file.
Perplexity is ``exp(loss)``.

A *labelled set* is prompt-completion data whose completions come from a small fixed set of
label strings (GLUE-style classification as generation). Each example is scored by the
log-likelihood of every label string as its completion (label tokens plus the final eos, as
trained); the prediction is the most likely label, and accuracy is the share predicted right.
``labels="auto"`` treats prompt-completion data as labelled when it has 2–32 distinct
completions, each used twice on average at least; a comma-separated list forces the set.

Results are written per adapter as JSON (see :func:`results_uri` for where).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

from ..data.formats import IGNORE, encode
from ..errors import SpecError, StorageError
from ..spec import DatasetSpec
from ..storage import exists, join, normalize, write_bytes
from .load import Adapter, Session

MAX_AUTO_LABELS = 32
_COLUMNS = ("text_column", "prompt_column", "completion_column", "messages_column")


def dataset_spec(adapter: Adapter, uri: str, fmt: str | None) -> DatasetSpec:
    """The adapter's dataset settings (columns, format) pointed at ``uri``."""
    trained = adapter.spec.get("dataset") or {}
    return DatasetSpec(uri=uri, format=fmt or trained.get("format") or adapter.format,
                       **{k: trained[k] for k in (*_COLUMNS, "max_row_bytes") if trained.get(k)})


def label_set(examples: list[dict[str, Any]], fmt: str, labels: str | None) -> list[str] | None:
    if labels == "none":
        return None
    explicit = labels not in (None, "auto")
    if fmt != "prompt_completion":
        if explicit:
            raise SpecError([f"--labels: accuracy needs prompt_completion data, this is {fmt} — "
                             "use --format prompt_completion, or drop --labels"])
        return None
    golds = [e["completion"] for e in examples]
    if explicit:
        assert labels is not None
        chosen = list(dict.fromkeys(labels.split(",")))
        unknown = sorted({g for g in golds if g not in chosen})
        if len(chosen) < 2 or unknown:
            raise SpecError([f"--labels: {len(chosen)} label(s) given; completions not among them: "
                             f"{', '.join(map(repr, unknown[:5])) or 'none'} — list every label string, comma-separated"])
        return chosen
    distinct = sorted(set(golds))
    if 2 <= len(distinct) <= MAX_AUTO_LABELS and len(distinct) * 2 <= len(golds):
        return distinct
    return None


def _rows(encoded) -> list[dict[str, Any]]:
    return [{"input_ids": e.input_ids, "labels": e.labels, "position_ids": list(range(len(e.input_ids)))}
            for e in encoded]


def _token_losses(session: Session, rows: list[dict[str, Any]], batch_size: int):
    """Per row: (sum of label-token cross-entropies, label tokens), in the order given."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from ..data.collate import collate

    pad = session.tokenizer.pad_token_id or 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        b = collate([rows[i] for i in idx], pad, packing=False)
        b = {k: v.to(session.device) for k, v in b.items()}
        with torch.no_grad():
            logits = session.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                   position_ids=b["position_ids"], use_cache=False).logits.float()
        ce = F.cross_entropy(logits.transpose(1, 2), b["labels"], ignore_index=IGNORE, reduction="none")
        sums = ce.double().sum(dim=1).tolist()
        counts = (b["labels"] != IGNORE).sum(dim=1).tolist()
        for j, i in enumerate(idx):
            out[i] = (sums[j], int(counts[j]))
    return out


def _measure(session: Session, rows, candidates, n_labels: int, batch_size: int) -> dict[str, Any]:
    losses = _token_losses(session, rows, batch_size)
    total = sum(s for s, _ in losses)
    tokens = sum(n for _, n in losses)
    loss = total / tokens
    result: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "label_tokens": tokens}
    if candidates is not None:
        cand_rows, golds = candidates
        scores = [-s for s, _ in _token_losses(session, cand_rows, batch_size)]
        right = 0
        for k, gold in enumerate(golds):
            row = scores[k * n_labels:(k + 1) * n_labels]
            right += int(max(range(n_labels), key=lambda j: (row[j], -j)) == gold)
        result["accuracy"] = right / len(golds)
    return result


def evaluate(session: Session, data_uri: str, fmt: str | None = None, scales: list[float] | None = None,
             labels: str | None = "auto", seq_len: int | None = None, batch_size: int = 8,
             max_examples: int | None = None) -> dict[str, Any]:
    """The base, then every adapter at every scale, on the same encoded examples."""
    from ..data.read import read_examples

    scales = scales or [1.0]
    first = session.adapters[0]
    spec = dataset_spec(first, data_uri, fmt)
    table, report = read_examples(data_uri, spec)
    examples = table.to_pylist()[:max_examples] if max_examples else table.to_pylist()
    if not examples:
        raise SpecError([f"--data: {data_uri} holds no usable examples for format {spec.format}"])
    seq_len = seq_len or int((first.spec.get("training") or {}).get("seq_len") or 512)
    encoded = [encode(e, spec.format, session.tokenizer, seq_len) for e in examples]
    kept = [e for e in encoded if e.n_labels > 0]
    if not kept:
        raise SpecError([f"--data: no example keeps a label token at seq_len {seq_len} — raise --seq-len"])
    rows = _rows(kept)
    label_strings = label_set(examples, spec.format, labels)
    candidates = None
    if label_strings:
        big = 1 << 30  # label strings are never truncated away
        cand = [encode({"prompt": e["prompt"], "completion": lab}, "prompt_completion", session.tokenizer, big)
                for e in examples for lab in label_strings]
        candidates = (_rows(cand), [label_strings.index(e["completion"]) for e in examples])
    n_labels = len(label_strings or [])

    results = []
    with session.active(None):
        base = {"model": "base", "adapter": None, "uri": None, "scale": None,
                **_measure(session, rows, candidates, n_labels, batch_size)}
    results.append(base)
    for adapter in session.adapters:
        for scale in scales:
            with session.active(adapter, scale):
                r = _measure(session, rows, candidates, n_labels, batch_size)
            r["loss_delta"] = r["loss"] - base["loss"]
            if "accuracy" in r:
                r["accuracy_delta"] = r["accuracy"] - base["accuracy"]
            results.append({"model": f"{adapter.label}@{scale:g}", "adapter": adapter.label, "uri": adapter.uri,
                            "scale": scale, **r})
    return {
        "data": data_uri,
        "format": spec.format,
        "base_model": session.base_label,
        "examples": len(kept),
        "dropped": len(encoded) - len(kept) + report.skipped,
        "truncated": sum(e.truncated for e in encoded),
        "seq_len": seq_len,
        "labels": label_strings,
        "results": results,
    }


def default_name(data_uri: str) -> str:
    stem = Path(data_uri.rstrip("/").rsplit("/", 1)[-1]).name
    for suffix in (".jsonl", ".json", ".parquet"):
        stem = stem.removesuffix(suffix)
    return check_name(re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "eval")


def check_name(name: str) -> str:
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,99}", name):
        raise SpecError([f"--name {name!r}: use letters, digits, '.', '_' and '-' (no '/')"])
    return name


def results_uri(adapter_uri: str, name: str) -> str:
    """Where ``eval/<name>.json`` goes. An adapter in the store layout
    (``<job>/adapter`` beside ``<job>/spec.yaml``) gets ``<job>/eval/<name>.json``: the
    published adapter prefix itself stays exactly as its manifest describes. Any other adapter
    directory gets ``<dir>/eval/<name>.json``; files its manifest does not list are ignored
    by verification and by ``pull``, so the adapter stays valid."""
    uri = normalize(adapter_uri)
    parent, _, leaf = uri.rstrip("/").rpartition("/")
    if leaf == "adapter" and parent and exists(join(parent, "spec.yaml")):
        return join(parent, "eval", f"{name}.json")
    return join(uri, "eval", f"{name}.json")


def save_results(summary: dict[str, Any], session: Session, name: str) -> tuple[dict[str, str], list[str]]:
    """One file per adapter (the base's numbers included). Returns ({label: uri}, warnings);
    a store that refuses the write costs a warning, not the results."""
    from .. import __version__

    saved, warnings = {}, []
    base = summary["results"][0]
    for adapter in session.adapters:
        doc = {
            **{k: v for k, v in summary.items() if k != "results"},
            "name": name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "lorafarm": __version__,
            "adapter": {"label": adapter.label, "uri": adapter.uri, "job_id": adapter.manifest.get("job_id")},
            "base": base,
            "results": [r for r in summary["results"][1:] if r["uri"] == adapter.uri and r["adapter"] == adapter.label],
        }
        target = results_uri(adapter.uri, name)
        try:
            write_bytes(target, json.dumps(doc, indent=2, sort_keys=True).encode())
            saved[adapter.label] = target
        except (OSError, StorageError) as e:
            warnings.append(f"could not write {target} ({e.__class__.__name__}: {e}) — results printed only")
        except Exception as e:  # noqa: BLE001 - remote stores raise their own kinds (botocore, ...)
            warnings.append(f"could not write {target} ({e.__class__.__name__}: {e}) — results printed only")
    return saved, warnings
