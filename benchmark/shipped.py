"""The files the suite ships as package data, found through their packages' `__path__`.

- the built-in dataset cards and the data they bundle (`datasets/`, imported as
  `medad_bench.datasets`);
- the CI gate's references, the published references and the committed cost tables
  (`results/reference/`, imported as `medad_bench.references`).

In a source checkout these are the repository's folders (the package-dir mapping in
pyproject.toml); in an installed wheel, folders inside `site-packages/medad_bench/`. A user's
own cards, references and results live where the user says, by default the working folder,
and are looked at first.
"""

from __future__ import annotations

import importlib
from pathlib import Path

#: Where a user's own references live, relative to the working folder.
LOCAL_REFERENCES = Path("results") / "reference"


#: The checkout folders of the data packages. They hold no `__init__.py` on purpose: a
#: top-level `datasets` package would shadow Hugging Face's (docs/design.md section 2). In an
#: installed wheel they are namespace folders inside medad_bench/, found by import;
#: an editable install's finder cannot import such folders, so a checkout is read directly.
CHECKOUT_FOLDERS = {"medad_bench.datasets": "datasets",
                    "medad_bench.references": "results/reference"}


def package_folder(package: str) -> Path:
    """The folder a package of the suite (code or package data) is read from."""
    # A package's __path__, not importlib.resources.files(): for a namespace folder the latter
    # is a MultiplexedPath, whose str() on Python 3.11 is its repr, not a path.
    try:
        return Path(next(iter(importlib.import_module(package).__path__)))
    except ModuleNotFoundError:
        if package not in CHECKOUT_FOLDERS:
            raise
        return Path(__file__).resolve().parents[1] / CHECKOUT_FOLDERS[package]


def builtin_cards() -> Path:
    """The folder of the built-in dataset cards."""
    return package_folder("medad_bench.datasets")


def shipped_references() -> Path:
    """The folder of the shipped references (gate, published/, costs/)."""
    return package_folder("medad_bench.references")


def reference_file(relative: str | Path) -> Path:
    """`results/reference/<relative>` of the working folder where it exists, else the shipped
    copy where that exists, else the working folder's path (to be written)."""
    local = LOCAL_REFERENCES / relative
    if local.exists():
        return local
    shipped = shipped_references() / relative
    return shipped if shipped.exists() else local


def resolve_reference(path: Path) -> Path:
    """A reference path as the user gave it; one under results/reference/ that is not in the
    working folder is read from the shipped references (so `--against
    results/reference/published/zhanglab.json` works outside a checkout)."""
    if path.exists() or path.is_absolute():
        return path
    try:
        relative = path.relative_to(LOCAL_REFERENCES)
    except ValueError:
        return path
    return reference_file(relative)
