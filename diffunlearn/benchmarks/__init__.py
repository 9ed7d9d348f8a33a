"""Benchmarks that run several unlearning methods side by side (`classifier`: the classification table)."""
