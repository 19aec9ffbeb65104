"""The built-in dataset cards (TOML) and the data they bundle: package data of the suite,
imported as `medad_bench.datasets` (see medad_bench/shipped.py)."""
