"""How many `diffunlearn/` files a reader passes through from an entry point to the first SFR-on update.

Counted as the package files with a function (not a module or class body: imports are not counted) that runs between
the entry point and the first call of `training/step.py: masked_step`, on the embedded DDPM with one step and no
in-loop checks (`docs/architecture.md` quotes the figures):

    python eval/reader_path.py cli    # diffunlearn unlearn configs/digits/ddpm_sfron.yaml ...
    python eval/reader_path.py api    # diffunlearn.unlearn(pipe, forget=[7], ...)

Use an empty DIFFUNLEARN_CACHE for a cold cache (a cached saliency mask skips its functions).
"""

import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffunlearn  # noqa: E402

ROOT = os.path.dirname(diffunlearn.__file__)
CO_OPTIMIZED = 0x1  # set on function code objects; module and class bodies lack it


def trace(entry) -> list:
    """The package files (relative paths, first-use order) with a function run before the first masked_step."""
    seen, done = [], []

    def hook(frame, event, arg):
        code = frame.f_code
        if done or event != "call" or not code.co_filename.startswith(ROOT) or not code.co_flags & CO_OPTIMIZED:
            return
        if code.co_filename not in seen:
            seen.append(code.co_filename)
        if code.co_name == "masked_step" and code.co_filename.endswith(os.path.join("training", "step.py")):
            done.append(True)

    sys.setprofile(hook)
    try:
        entry()
    finally:
        sys.setprofile(None)
    return [os.path.relpath(f, ROOT) for f in seen if not f.endswith("__init__.py")]


def main(which: str) -> None:
    out = os.path.join(tempfile.mkdtemp(prefix="reader-path-"), "run")
    if which == "cli":
        from diffunlearn.commands.cli import main as cli

        files = trace(lambda: cli(["unlearn", "configs/digits/ddpm_sfron.yaml", "--output", out, "--no-eval",
                                   "train.steps=1", "stop.check_every=0"]))
    else:
        pipe = diffunlearn.from_pretrained("embedded:digits/ddpm")
        files = trace(lambda: diffunlearn.unlearn(pipe, forget=[7], steps=1, evaluate=False, progress=False,
                                                  output=out, overrides={"stop.check_every": 0}))
    print(f"{len(files)} files:", ", ".join(files))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cli")
