"""Data: read (JSONL/JSON/Parquet, local or S3), format + loss masks, packing, deterministic
sharding, streaming Ray Data tokenization into a sharded cache in the store, and workers' bounded
row reads from it."""

from .collate import collate, count_label_tokens
from .formats import IGNORE, Encoded, encode
from .labels import LabelReport, check_labels
from .packing import to_rows
from .pipeline import Prepared, cache_key, load_rows, prepare
from .read import BadRowReport, check_row, fingerprint, list_files, read_examples
from .rows import RowSource
from .shard import epoch_order, global_batch, micro_batches, steps_per_epoch, worker_slice

__all__ = [
    "IGNORE", "BadRowReport", "Encoded", "LabelReport", "Prepared", "cache_key", "check_labels", "check_row", "collate", "count_label_tokens",
    "encode", "epoch_order", "fingerprint", "global_batch", "list_files", "load_rows", "micro_batches", "prepare",
    "read_examples", "RowSource", "steps_per_epoch", "to_rows", "worker_slice",
]
