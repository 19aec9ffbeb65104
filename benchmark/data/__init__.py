"""The data layer: dataset cards, readers, the synthetic generator, splits and the cache."""

from benchmark.data.cards import DatasetCard, available_cards, load_card
from benchmark.data.prepared import PreparedDataset, prepare

__all__ = ["DatasetCard", "PreparedDataset", "available_cards", "load_card", "prepare"]
