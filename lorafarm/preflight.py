"""The preflight of ``lorafarm validate``, ``run`` and ``submit`` (:func:`lorafarm.api.prepare`):
a dry run that does the cheap I/O a job would fail on later, before anything is queued,
started or written.

Checks, all reported at once: the dataset exists and is readable with the columns the format
needs; the base model resolves and has the target modules; a sample tokenizes; how many
examples/tokens there are, how many lose all labels to masking or truncation; steps per
epoch, total steps (:mod:`lorafarm.spec.steps`, the count the recipe uses) and a rough ETA.
Tokenizes at most ``SAMPLE_LIMIT`` examples and extrapolates beyond that. Intervals longer than
the run are capped in the spec it returns, each with a notice.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import LorafarmError, PreflightError
from .spec import JobSpec
from .spec.steps import cap_intervals, steps_per_epoch, total_steps

SAMPLE_LIMIT = 5000
# Rough training throughput per worker (tokens/s) for the ETA; measured on tiny-llama on CPU
# and quoted for an 8B base on one H100. An estimate, labelled as such.
CPU_TOKENS_PER_S = 4000.0
GPU_TOKENS_PER_S = 3000.0


def preflight(spec: JobSpec) -> dict[str, Any]:
    """``lorafarm validate``'s report (``notices``: intervals capped to the run's length)."""
    return check(spec)[1]


def check(spec: JobSpec) -> tuple[JobSpec, dict[str, Any]]:
    """Every problem at once (:class:`PreflightError`), or the spec a job runs — its intervals
    capped to the run's length (:func:`lorafarm.spec.steps.cap_intervals`) — and the report."""
    problems: list[str] = []
    report: dict[str, Any] = {"tenant": spec.tenant, "name": spec.name}
    notices: list[str] = []
    tokenizer = model_dir = None
    try:
        from .model import resolve_base

        model_dir = resolve_base(spec.base_model)
        report["base_model"] = str(model_dir)
    except LorafarmError as e:
        problems.append(str(e))
    if model_dir is not None and spec.trust_remote_code:
        # the base's own code runs only where the scheduler allows it (the tenants file), never here
        notices.append("trust_remote_code: the base model's own code is not run before the job starts — its target "
                       "modules and tokenizer are checked then")
    elif model_dir is not None:
        model_problems = _check_model(spec, model_dir, report)
        problems.extend(model_problems)
        try:
            from .model import load_tokenizer

            if not any(p.startswith("base_model:") for p in model_problems):  # its config is readable
                tokenizer = load_tokenizer(model_dir)
        except Exception as e:  # noqa: BLE001 - a broken tokenizer is the user's to fix: one line
            problems.append(f"base_model: {model_dir}: cannot load its tokenizer ({_one_line(e)}) — "
                            "check the directory's tokenizer files")
    table = None
    try:
        from .data import read_examples

        table, bad = read_examples(spec.dataset.uri, spec.dataset)
        report["examples"] = len(table)
        report["bad_rows_skipped"] = getattr(bad, "skipped", 0)
        if len(table) == 0:
            problems.append(f"dataset.uri: {spec.dataset.uri} has no usable examples — check the file and dataset.format")
    except LorafarmError as e:
        problems.append(f"dataset.uri: {e}")
    if spec.dataset.eval_uri:
        try:
            from .data import read_examples

            eval_table, _ = read_examples(spec.dataset.eval_uri, spec.dataset)
            report["eval_examples"] = len(eval_table)
        except LorafarmError as e:
            problems.append(f"dataset.eval_uri: {e}")
    if table is not None and tokenizer is not None and len(table):
        problems.extend(_check_tokens(spec, table, tokenizer, report))
    if problems:
        raise PreflightError(problems)
    steps = report.get("total_steps") or spec.training.max_steps
    if steps:
        spec, capped = cap_intervals(spec, steps)
        notices.extend(capped)
    report["notices"] = notices
    return spec, report


def _one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` of a library's exception on one line, cut at ``limit`` characters."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_model(spec: JobSpec, model_dir, report: dict[str, Any]) -> list[str]:
    """Target modules exist: build the model on the meta device (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .model import linear_module_names, missing_targets

    try:
        config = AutoConfig.from_pretrained(str(model_dir))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001 - a broken config is the user's to fix: one line
        return [f"base_model: {model_dir}: cannot build the model from its config ({_one_line(e)}) — "
                "check its config.json, or use another base_model"]
    report["base_params"] = sum(p.numel() for p in model.parameters())
    missing = missing_targets(model, spec.lora)
    if missing:
        known = ", ".join(sorted(linear_module_names(model)))
        return [f"lora.target_modules: {', '.join(missing)} not found in the base model — use some of: {known} (or all-linear)"]
    targets = linear_module_names(model) if spec.lora.target_modules == "all-linear" else set(spec.lora.target_modules)
    adapted = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in targets
               and not n.endswith("lm_head")]
    report["adapted_modules"] = len(adapted)
    report["lora_params"] = sum(
        spec.lora.r * (m.in_features + m.out_features) for n, m in model.named_modules() if n in set(adapted)
    )
    return []


def _check_tokens(spec: JobSpec, table, tokenizer, report: dict[str, Any]) -> list[str]:
    from .data import check_labels

    t = spec.training
    n = len(table)
    sample = table.slice(0, min(n, SAMPLE_LIMIT)).to_pylist()
    encoded, labels = check_labels(sample, spec.dataset, tokenizer, t.seq_len)
    tokens, label_tokens, masked, truncated = labels.tokens, labels.label_tokens, labels.dropped, labels.truncated
    report["all_masked_rows"] = labels.rows()[:20]
    report["warnings"] = labels.warnings()
    if labels.problems():
        return labels.problems()
    factor = n / len(sample)
    report["sample_tokens"] = len(encoded[0].input_ids)
    report["tokens"] = round(tokens * factor)
    report["label_tokens"] = round(label_tokens * factor)
    report["all_masked_examples"] = round(masked * factor)
    report["truncated_examples"] = round(truncated * factor)
    report["estimated"] = n > len(sample)
    train_examples = n - masked * factor
    if spec.dataset.eval_fraction:
        train_examples *= 1 - spec.dataset.eval_fraction
    rows = train_examples
    if t.packing:
        rows = max(1, math.ceil(tokens * factor * (1 - spec.dataset.eval_fraction) / t.seq_len))
    per_epoch = steps_per_epoch(rows, t.global_batch_size)
    report["steps_per_epoch"] = per_epoch
    problems = []
    if per_epoch == 0:
        problems.append(
            f"training.global_batch_size: {t.global_batch_size} is larger than the {int(rows)} training rows — "
            "use a smaller global_batch_size or more data"
        )
        return problems
    steps = total_steps(t, per_epoch)
    report["total_steps"] = steps
    tokens_per_step = tokens * factor / max(n, 1) * (t.seq_len / max(tokens / len(sample), 1) if t.packing else 1)
    tokens_per_step *= t.global_batch_size
    rate = (GPU_TOKENS_PER_S if spec.resources.gpus_per_worker else CPU_TOKENS_PER_S) * spec.resources.workers
    report["eta_seconds_rough"] = round(steps * tokens_per_step / rate)
    return problems
