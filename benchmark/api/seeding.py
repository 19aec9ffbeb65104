"""One place that seeds every random number generator a run touches."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

#: cuBLAS's fixed workspace: without it deterministic matmuls on CUDA raise.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from the run's seed.

    Libraries that draw from the global generators (anomalib's random projection falls back to
    NumPy's, timm's initialisers use torch's) become reproducible too.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    # cuBLAS needs this for deterministic matmuls on CUDA; harmless on the CPU.
    prepare_determinism()


def prepare_determinism() -> None:
    """Set cuBLAS's workspace in the environment. cuBLAS reads it when its first handle is
    made, so this must come before the process's first CUDA call; worker processes inherit it
    (and the executors forward it to Ray workers)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch.use_deterministic_algorithms(enabled) for the duration of one run, then the
    previous mode back (runs of another plan may follow in the same process). An operation
    without a deterministic implementation then raises instead of silently varying."""
    if enabled:
        prepare_determinism()
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(enabled)
    if enabled:
        torch.backends.cudnn.benchmark = False  # its autotuning may pick another kernel per run
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
        torch.backends.cudnn.benchmark = cudnn_benchmark
