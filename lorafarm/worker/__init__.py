"""Workers: the per-rank training recipe and its launch on Ray Train."""
