"""The suite's built-in methods, one module each; importing this package registers them.

Adding a method: write `methods/<name>.py` with a `@register_method` class, and add its import
below. Other packages register theirs through the `benchmark.methods` entry-point group.
"""

from methods import (  # noqa: F401
    alad,
    alocc,
    anomalypro,
    autoencoder,
    brainomaly,
    dae,
    fanogan,
    ganomaly,
    padim,
    patchcore,
    reverse_distillation,
    stfpm,
    vae,
)
