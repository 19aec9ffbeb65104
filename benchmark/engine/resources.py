"""What a run costs: peak host memory (and GPU memory on CUDA) over a stretch of work.

On Linux the kernel's high-water mark of resident memory (VmHWM) is reset through
/proc/self/clear_refs at the start and read at the end, so each run of a grid gets its own peak,
not the largest of every run before it. Elsewhere the process-lifetime peak (ru_maxrss) is the
best there is, an upper bound. GPU peaks come from torch's allocator statistics.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

from medad_bench.errors import UsageError

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _kib_field(name: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _lifetime_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes


class MemoryWatch:
    """Peak memory between `start()` and the `peak_*` reads; `start()` may be called again."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = False
        self._grid_peak = 0

    def start(self) -> MemoryWatch:
        self._grid_peak = max(self._grid_peak, self.peak_host_bytes())
        try:
            _CLEAR_REFS.write_text("5")  # reset VmHWM to the current resident size
            self.resettable = _kib_field("VmHWM") is not None
        except OSError:
            self.resettable = False
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def peak_host_bytes(self) -> int:
        """Largest resident size of this process since `start()` (Linux), else since it began."""
        if self.resettable:
            value = _kib_field("VmHWM")
            if value is not None:
                return value
        return _lifetime_peak_bytes()

    def peak_gpu_bytes(self) -> int | None:
        """Largest GPU memory torch held for tensors since `start()`, None off CUDA."""
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.max_memory_allocated(self.device))

    def process_peak_bytes(self) -> int:
        """The largest peak seen over every stretch this watch measured (the grid's peak)."""
        return max(self._grid_peak, self.peak_host_bytes())


def megabytes(n_bytes: int | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / 2**20, 1)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a clear error when cuda is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA GPU is visible to torch. Use --device cpu "
                             "(or auto), or check the driver / CUDA_VISIBLE_DEVICES.")
        return torch.device(name)
    raise UsageError(f"--device must be auto, cpu or cuda[:N], got '{name}'.")
