"""The quick profiles' training budget: every trainable method sees the same number of
training images.

A comparison is fair only if no method gets more training than another. The suite's unit is
the number of training images drawn into batches (with repetition) over the whole run, counted
the same way for every method (`Method.images_seen`); it does not depend on the machine, and
it does not grow with the size of the data tree (issue 12: a quick profile is a fixed budget).
Wall time on a given machine then differs by method, and the report's cost figure shows it.

32,000 images: AnomalyPro and Brainomaly 1,000 iterations of an A batch and a B batch of 16;
f-AnoGAN 166 generator steps x 5 critic batches of 32 + 166 encoder batches of 32 (31,872);
ALAD, ALOCC and GANomaly 1,000 batches of 32. At 48,000 the eight methods' training alone
came to about 10 minutes on 2 cores (ALAD 168 s, f-AnoGAN 65 s, AnomalyPro and Brainomaly
~100 s each), over the limit for `bench run --methods all --dataset synthetic --seeds 0`.
"""

from __future__ import annotations

QUICK_IMAGES_SEEN = 32_000

#: The largest working size of the trained methods' quick profiles (px): the dataset's size,
#: capped. A trained network's step costs about 3-4x more at 64 px than at 32 px on a CPU
#: (STFPM on EfficientNet-Lite0, batch 32: 0.87 s vs 0.28 s a step, measured on 2 cores), so
#: at the dataset's 64 px the equal budget would not fit `bench run --methods all` in minutes.
QUICK_WORKING_SIZE = 32


def steps_for(images_per_step: int, budget: int = QUICK_IMAGES_SEEN) -> int:
    """Training steps that draw `budget` images at `images_per_step` each (rounded down: a
    method draws at most one step's images fewer than the budget)."""
    if images_per_step <= 0:
        raise ValueError("images_per_step must be positive")
    return max(1, budget // images_per_step)
