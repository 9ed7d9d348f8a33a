"""Attacks that try to bring a forgotten target back (one file each, self-registered with `register_attack`), and
the suite that runs them against an unlearned model and its base (`suite.py`; `diffunlearn attack`)."""
