"""Pass/fail criteria of a forgetting run, shared by the acceptance grid and the slow tests."""

from __future__ import annotations

# The foundation issue's bar for class forgetting on the embedded DDPM.
CLASS_FORGETTING = {"base_fa_min": 0.90, "unlearned_fa_max": 0.05, "retained_ratio_min": 0.95, "fid_ratio_max": 1.25}


def check_class_forgetting(report: dict, bar: dict = CLASS_FORGETTING) -> dict:
    """{criterion: (value, passed)} for one `report.json`."""
    base, unl = report["base"], report["unlearned"]
    retained_ratio = unl["retained_accuracy"] / max(base["retained_accuracy"], 1e-12)
    fid_ratio = unl["fid_retained"] / max(base["fid_retained"], 1e-12)
    return {
        "base_fa": (base["forget_accuracy"], base["forget_accuracy"] >= bar["base_fa_min"]),
        "unlearned_fa": (unl["forget_accuracy"], unl["forget_accuracy"] <= bar["unlearned_fa_max"]),
        "retained_ratio": (retained_ratio, retained_ratio >= bar["retained_ratio_min"]),
        "fid_ratio": (fid_ratio, fid_ratio <= bar["fid_ratio_max"]),
    }

