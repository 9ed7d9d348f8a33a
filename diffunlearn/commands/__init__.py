"""Entry commands: what `diffunlearn unlearn / evaluate / fast-ntk`, the recipes and the eval scripts run."""
