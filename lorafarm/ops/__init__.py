"""The operator's and tenant's view of jobs: history files, loss plots, ``top``, accelerator figures.

Nothing here imports Ray or torch at module level; ``plot`` imports matplotlib when called.
"""
