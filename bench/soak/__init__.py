"""The soak: `python -m bench.soak` (bench/soak/__main__.py says what it does)."""
