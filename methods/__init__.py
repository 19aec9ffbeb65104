"""The suite's built-in methods, one module each (imported as `medad_bench.methods`).

Adding a method: write `methods/<name>.py` with a `@register_method` class and declare it in
pyproject.toml's `[project.entry-points."medad_bench.methods"]`, as any plug-in does
(docs/plugins.md); `bench list` then finds it. Shared parts: `_gan.py` (GAN chores, networks,
losses), `_translation.py` (AnomalyPro and Brainomaly), `_autoencoder.py`, `_anomalib.py`
(backbone methods through anomalib), `_budget.py` (the quick profiles' equal training
budget). Backbone weights are the core's (benchmark/weights.py): the CLI's `bench list` and
`bench check-weights` use them too.
"""
