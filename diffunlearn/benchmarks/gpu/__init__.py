"""GPU benchmark at real model sizes with random weights (eval/gpu_step_bench.py; figures in docs/gpu.md)."""
