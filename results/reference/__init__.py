"""The shipped references: the CI gate's (<dataset>.json), the published ones (published/)
and the measured cost tables (costs/); package data, imported as `medad_bench.references`
(see medad_bench/shipped.py)."""
