"""The runs: one unlearning run (prepare -> train -> evaluate -> write) and one evaluation, as library objects that
the CLI, the Python API and the benchmarks share."""
