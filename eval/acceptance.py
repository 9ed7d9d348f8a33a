"""Sweep the main job over forget classes and seeds and print the acceptance table (markdown).

    python eval/acceptance.py --classes 7 3 0 --seeds 0 1 --output out/acceptance [key=value ...]
"""

import argparse
import json
import time
from pathlib import Path

from diffunlearn.evaluation.criteria import markdown_table
from diffunlearn.run import unlearn_run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits/ddpm_sfron.yaml")
    parser.add_argument("--classes", type=int, nargs="+", default=[7, 3, 0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output", default="out/acceptance")
    args, overrides = parser.parse_known_args()
    rows = []
    for cls in args.classes:
        for seed in args.seeds:
            start = time.perf_counter()
            report = unlearn_run(args.config, Path(args.output) / f"class{cls}_seed{seed}",
                                 [f"forget.classes=[{cls}]", f"seed={seed}", *overrides], overwrite=True,
                                 progress=False)
            rows.append((f"class {cls}, seed {seed}", report, time.perf_counter() - start))
            print(json.dumps({"class": cls, "seed": seed, "timing": report["timing"]}), flush=True)
    table = markdown_table(rows)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    (Path(args.output) / "acceptance.md").write_text(table + "\n")
    print(table)
