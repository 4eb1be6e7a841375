"""How many threads a process's BLAS runs on, set before NumPy loads (it reads the variables
once, at import): this module imports nothing that imports NumPy.

The coordinator's held-out evaluation runs small matrix products a few times a second. With
OpenBLAS's default of a thread per core, its threads spin-wait between products: the default job
with 4 workers on 2 cores gave the coordinator 8.9-10.3 CPU-s of a 22 s run, against 1.5-1.6 with
one thread, taken from the workers and shards. So the coordinator runs one unless the operator
sets the variables (torch reads OMP_NUM_THREADS too). Workers keep the library's default: a
large model's products gain from the cores, and torch workers have ``PSC_TORCH_THREADS``.
"""

from __future__ import annotations

import os

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads(threads: int = 1) -> None:
    """Each variable the operator has not set: ``threads``."""
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
