"""The split protocol: which source image goes to which split, by whole subjects.

Splits: `train_mixed` (set A, unlabelled to the methods), `train_normal` (set B, healthy),
`val` (labelled, picks the threshold), `test`. A card's protocol section gives the counts of
the published protocol (`mixed_positive`, `mixed_healthy`, `val_positive`, `val_healthy`,
`test_positive`, `test_healthy`, optionally `normal_healthy`); a missing count means "all that
remain" (for `mixed_healthy`: the share `mixed_healthy_share` of the remaining healthy images;
for `mixed_positive`, where the card gives `mixed_diseased_share` instead: as many diseased
images as make that share of set A, e.g. 0.3 for the seed paper's COVIDx set A).

Subjects are shuffled with the card's `split_seed` and assigned whole, so no patient is in two
splits. When a pool of the tree (train or test) is smaller than the published protocol needs,
every count it feeds is scaled by one factor, keeping the published proportions, and a note says so.

A count is a total over the pools that feed the split: pools are drawn from in the order test,
val, train, any, each giving only what the earlier ones left of the count, and a split that
drew from more than one pool gets a note saying how much came from each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medad_bench.data.splits import check_subject_disjoint
from medad_bench.errors import BenchError

SPLITS = ("train_mixed", "train_normal", "val", "test")
QUOTA_KEYS = ("mixed_positive", "mixed_healthy", "val_positive", "val_healthy",
              "test_positive", "test_healthy", "normal_healthy")
#: Splits each pool feeds, in the order they are filled.
POOL_SPLITS = {"test": ("test",), "train": ("val", "train_mixed", "train_normal"),
               "val": ("val",), "any": ("test", "val", "train_mixed", "train_normal")}
#: Pools set A can be drawn from; a tree with none of them has no set A.
MIXED_POOLS = ("train_mixed", "train", "any")
#: Shares carved for a split no pool of its own feeds, when the card gives no counts.
ANY_POOL_SHARES = {"test": 0.2, "val": 0.1}


@dataclass
class Assignment:
    table: pd.DataFrame  # the source table plus `split` (rows not used are dropped)
    scale: float = 1.0
    notes: list[str] = field(default_factory=list)
    unused: dict[str, int] = field(default_factory=dict)


def assign_splits(source: pd.DataFrame, settings: dict, *,
                  published: pd.Series | None = None) -> Assignment:
    """Assign every source row a split (or leave it unused), following the card's protocol."""
    table = source.copy()
    table["split"] = ""
    fixed = table.pool.isin(("train_mixed", "train_normal"))
    table.loc[fixed, "split"] = table.loc[fixed, "pool"]
    notes: list[str] = []
    if published is not None:
        table["split"] = table.image_id.map(published).fillna("")
        notes.append(f"published split used ({len(published)} images)")
    quotas, scale = _scaled_quotas(table, settings, notes, fixed=set(table.split) - {""})
    rng = np.random.default_rng(int(settings.get("split_seed", 0)))
    own_pools = set(table.pool)
    preset = table.split != ""
    for pool in ("test", "val", "train", "any"):
        for split in POOL_SPLITS[pool]:
            if split in own_pools and pool != split and math.inf in quotas[split]:
                continue  # the tree's own `split` pool feeds it; take nothing from others
            _fill(table, pool, split, _still_needed(table, split, quotas[split]), rng)
    notes.extend(_mixed_pool_notes(table[~preset]))
    used = table[table.split != ""].copy()
    unused = _unused_counts(table[table.split == ""])
    if unused:
        notes.append("not used by the protocol: " +
                     ", ".join(f"{n} {k}" for k, n in unused.items()))
    has_mixed_pool = bool(table.pool.isin(MIXED_POOLS).any())
    if not has_mixed_pool:
        notes.append("the tree has no unlabelled pool: set A (train_mixed) is empty, so "
                     "methods that train on unlabelled images cannot run")
    _check_result(used, mixed_needed=has_mixed_pool)
    return Assignment(table=used.reset_index(drop=True), scale=scale, notes=notes,
                      unused=unused)


def _scaled_quotas(table: pd.DataFrame, settings: dict, notes: list[str],
                   fixed: set[str]) -> tuple[dict[str, list[float]], float]:
    """Per split, [positive, healthy] counts (inf = all remaining), scaled to the tree.
    Splits in `fixed` were set by published lists or the CSV: nothing is added to them."""
    unknown = {k for k in settings if k.endswith(("_positive", "_healthy"))} - set(QUOTA_KEYS)
    if unknown:
        raise BenchError(f"unknown protocol count(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(QUOTA_KEYS)}. Fix the card.")
    free = table[table.split == ""]
    quotas: dict[str, list[float]] = {}
    for split, prefix in (("train_mixed", "mixed"), ("val", "val"), ("test", "test"),
                          ("train_normal", "normal")):
        quotas[split] = [_count(settings, f"{prefix}_positive", split, free, 1),
                         _count(settings, f"{prefix}_healthy", split, free, 0)]
    quotas["train_normal"][0] = 0
    for split in fixed:
        quotas[split] = [0.0, 0.0]
    scales = _pool_scales(free, quotas)
    for split in quotas:
        feeding = [scales[p] for p, fed in POOL_SPLITS.items() if split in fed and p in scales]
        factor = min(feeding, default=1.0)
        quotas[split] = [_shrink(q, factor) for q in quotas[split]]
    scale = min(scales.values(), default=1.0)
    for pool, factor in scales.items():
        if factor < 1:
            notes.append(f"the tree's {pool} images are fewer than the published protocol "
                         f"needs: the {pool} counts are scaled by {factor:.4f}, keeping the "
                         f"published proportions")
    if "mixed_healthy" not in settings and "train_mixed" not in fixed:
        quotas["train_mixed"][1] = -float(settings.get("mixed_healthy_share", 0.5))
    if "mixed_positive" not in settings and "mixed_diseased_share" in settings:
        quotas["train_mixed"][0] = -_diseased_share(settings["mixed_diseased_share"])
    return quotas, scale


def _diseased_share(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise BenchError(f"mixed_diseased_share must be a fraction between 0 and 1 (the share "
                         f"of set A that is diseased), got {value!r}. Fix the card.")
    return float(value)


def _count(settings: dict, key: str, split: str, free: pd.DataFrame, label: int) -> float:
    """A card count; else all that remain, or a share where no pool feeds the split itself."""
    if key in settings:
        value = settings[key]
        if not isinstance(value, int) or value < 0:
            raise BenchError(f"protocol count {key} must be a non-negative integer, got "
                             f"{value!r}. Fix the card.")
        return float(value)
    if split in ANY_POOL_SHARES and not (free.pool == split).any():
        # No official split for it: carve a share of each class of the pools that feed it.
        feeding = free[free.pool.isin([p for p, s in POOL_SPLITS.items() if split in s])]
        total = int((feeding.label == label).sum())
        return float(max(1, round(ANY_POOL_SHARES[split] * total))) if total else 0.0
    return math.inf


def _pool_scales(free: pd.DataFrame, quotas: dict[str, list[float]]) -> dict[str, float]:
    """Per pool, the largest factor <= 1 at which it can meet the finite counts it feeds."""
    scales = {}
    for pool, splits in POOL_SPLITS.items():
        rows = free[free.pool == pool]
        if rows.empty:
            continue
        scale = 1.0
        for index, label in ((0, 1), (1, 0)):
            needed = sum(quotas[s][index] for s in splits if math.isfinite(quotas[s][index]))
            have = int((rows.label == label).sum())
            if needed > 0:
                scale = min(scale, have / needed)
        scales[pool] = scale
    return scales


def _shrink(count: float, scale: float) -> float:
    if not math.isfinite(count) or count == 0:
        return count
    return float(max(1, math.floor(count * scale)))


def _fill(table: pd.DataFrame, pool: str, split: str, quota: list[float],
          rng: np.random.Generator) -> None:
    """Give `split` whole subjects from `pool` until its counts are met (or nothing fits)."""
    free = table[(table.split == "") & (table.pool == pool)]
    if free.empty:
        return
    per_subject = free.groupby("subject_id")["label"].agg(positive="sum", total="count")
    per_subject["healthy"] = per_subject.total - per_subject.positive
    need_pos, need_neg = quota
    if need_neg < 0:  # a share of the healthy images left in the pool
        need_neg = round(-need_neg * per_subject.healthy.sum())
    if need_pos < 0:  # diseased images making this share of the split
        need_pos = min(round(need_neg * -need_pos / (1 + need_pos)), per_subject.positive.sum())
    chosen = []
    for subject in rng.permutation(per_subject.index.to_numpy()):
        positive, healthy = per_subject.at[subject, "positive"], per_subject.at[subject, "healthy"]
        if positive <= need_pos and healthy <= need_neg:
            chosen.append(subject)
            need_pos -= positive
            need_neg -= healthy
        if need_pos == 0 and need_neg == 0:
            break
    rows = free.index[free.subject_id.isin(chosen)]
    table.loc[rows, "split"] = split


def _still_needed(table: pd.DataFrame, split: str, quota: list[float]) -> list[float]:
    """The split's counts less what earlier pools already gave it (a count is a total, not a
    quota per pool). Shares (negative) and "all that remain" (inf) stand as they are."""
    given = table.label[table.split == split]
    needed = []
    for count, label in zip(quota, (1, 0), strict=True):
        if math.isfinite(count) and count > 0:
            count = float(max(0, count - int((given == label).sum())))
        needed.append(count)
    return needed


def _mixed_pool_notes(table: pd.DataFrame) -> list[str]:
    """A note per split the protocol filled from more than one of the tree's pools."""
    notes = []
    drawn = table[table.split != ""]
    for split, rows in drawn.groupby("split", sort=False):
        if rows.pool.nunique() < 2:
            continue
        parts = [f"{int(group.label.sum())} diseased + {int((group.label == 0).sum())} healthy "
                 f"from its {'unsplit' if pool == 'any' else pool} images"
                 for pool, group in rows.groupby("pool", sort=False)]
        notes.append(f"split {split} drew from more than one of the tree's pools: "
                     f"{'; '.join(parts)}")
    return notes


def _unused_counts(rows: pd.DataFrame) -> dict[str, int]:
    counts = rows.groupby(["pool", "label"]).size()
    return {f"{pool} {'diseased' if label else 'healthy'}": int(n)
            for (pool, label), n in counts.items()}


def _check_result(used: pd.DataFrame, *, mixed_needed: bool = True) -> None:
    """Every split has both classes (set B healthy ones). Set A may be all of one kind on a
    tiny tree (it stays unlabelled), and empty where the tree has no pool to draw it from
    (BMAD publishes none): an empty set A is an error only where the protocol should have
    filled it."""
    for split in SPLITS:
        labels = set(used.label[used.split == split])
        wanted = {0} if split == "train_normal" else {0, 1}
        if split == "train_mixed" and (labels or not mixed_needed):
            continue
        if not wanted <= labels:
            raise BenchError(f"the protocol left split '{split}' without "
                             f"{'healthy' if 0 not in labels else 'diseased'} images. The tree "
                             f"is too small or too one-sided; add images or lower the card's "
                             f"counts.")
    try:
        check_subject_disjoint(used)
    except ValueError as exc:
        raise BenchError(f"{exc}. Fix the split lists so each subject is in one split.") from exc
