"""The benchmarks and the soak, each a module run from the repository root as `python -m bench.<name>`
(`scripts/bench <name>` installs what they need first). They start their processes with devtools."""
