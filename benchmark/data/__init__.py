"""The data layer: dataset cards, readers, the synthetic generator, splits and the cache.

`prepare` and `PreparedDataset` load lazily: the decoding worker processes import this package
and should not pay for torch (which `PreparedDataset.train_set` needs) in every worker.
"""

from typing import Any

from medad_bench.data.cards import DatasetCard, available_cards, load_card

__all__ = ["DatasetCard", "PreparedDataset", "available_cards", "load_card", "prepare"]


def __getattr__(name: str) -> Any:
    if name in ("PreparedDataset", "prepare"):
        from medad_bench.data import prepared

        return getattr(prepared, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
