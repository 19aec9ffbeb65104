"""What the GPU scripts share: the built-in synthetic set at the published image size."""

from __future__ import annotations

from pathlib import Path

from medad_bench.data import load_card, prepare
from medad_bench.data.cards import parse_card


def synthetic_at(size: int, cache_root: Path) -> object:
    """The `synthetic` card's images generated at `size` px (a card of its own, so its cache
    never mixes with the 64 px one), prepared under `cache_root`."""
    text = load_card("synthetic").path.read_text().replace("image_size = 64",
                                                            f"image_size = {size}")
    card_path = Path(f"/tmp/synthetic-{size}.toml")
    card_path.write_text(text.replace('name = "synthetic"', f'name = "synthetic-{size}"'))
    return prepare(parse_card(card_path), cache_root=cache_root, show_progress=False)
