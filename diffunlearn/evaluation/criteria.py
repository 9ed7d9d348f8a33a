"""Pass/fail criteria for a class-forgetting run, shared by the acceptance sweep and the slow tests."""

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


def markdown_table(rows: list) -> str:
    """rows: (label, report, wall seconds) -> markdown with every criterion and its verdict."""
    lines = ["| run | base FA | unlearned FA | RA base -> unl. (ratio) | FID base -> unl. (ratio) | wall s | pass |",
             "|---|---|---|---|---|---|---|"]
    for label, report, wall in rows:
        c = check_class_forgetting(report)
        b, u = report["base"], report["unlearned"]
        ok = all(passed for _, passed in c.values())
        lines.append(f"| {label} | {b['forget_accuracy']:.3f} | {u['forget_accuracy']:.3f} | "
                     f"{b['retained_accuracy']:.3f} -> {u['retained_accuracy']:.3f} ({c['retained_ratio'][0]:.3f}) | "
                     f"{b['fid_retained']:.3f} -> {u['fid_retained']:.3f} ({c['fid_ratio'][0]:.3f}) | "
                     f"{wall:.0f} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines)
