"""A run's output folder: checked before anything runs, built in a hidden partial folder, moved into place when
complete, and free of the user's file system (no absolute path in any saved file) once it is.

Paths in saved files are shown as `embedded:NAME` (a model shipped in the package), as `./RELATIVE` when inside
the working folder, else as `<local>/NAME` (none of which reads as a Hub id).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import uuid
from pathlib import Path

import yaml

from .assets import ASSETS, EMBEDDED_PREFIX, HUB_ID
from .errors import UserError

CONFIG_FILE = "config.yaml"


def atomic_write(path, write, commit: bool = True) -> None:
    """Write the file `path` atomically: `write(tmp)` fills a temporary sibling, which is then renamed over `path`
    (readers never see a partial file; a killed writer leaves at most a hidden temporary). `commit=False`: call
    `write` but keep nothing (the processes of a launch that take part in a collective write but do not own it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        if commit:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))


def markdown_table(header: list, rows: list) -> list:
    """Markdown table lines: a header row, the separator, one line per row (cells already formatted)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {str(out)!r} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--output {str(out)!r} already holds a run; pass --overwrite to replace it or pick "
                        "another folder")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--output {str(out)!r} is not writable: {str(parent)!r} is a file, not a folder")
    try:  # a real probe: permission bits say nothing for root, read-only file systems or quotas
        tempfile.TemporaryDirectory(dir=parent, prefix=".diffunlearn-probe-").cleanup()
    except OSError as exc:
        raise UserError(f"--output {str(out)!r} is not writable ({str(parent)!r}: {exc.strerror})") from None


def work_folder(out: Path) -> Path:
    """The hidden sibling `.NAME.partial` in which the output folder `out` is built (and a rerun resumes)."""
    return out.parent / f".{out.name}.partial"


def prepare_work_dir(work: Path, identity: dict, overwrite: bool, is_main: bool = True, file: str = CONFIG_FILE,
                     what: str = "run with a different config", rerun: str = "with its config") -> bool:
    """Create a partial-output folder (main process only) holding `identity` (plain YAML data: a run's resolved
    config, a suite's settings) as `file`, or reuse one holding the same identity to resume; returns True when
    resuming. Another identity there is refused unless `overwrite`."""
    if work.is_dir():
        saved = yaml.safe_load((work / file).read_text()) if (work / file).is_file() else None
        if saved == identity:
            return True
        if not overwrite:
            raise UserError(f"an unfinished {what} is in {str(work)!r}; rerun {rerun} to resume, or pass "
                            "--overwrite to discard it")
    if is_main:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / file).write_text(yaml.safe_dump(identity, sort_keys=False))
    return False


def pipeline_folder(path) -> str:
    """The pipeline of a model path: a run folder holds it at its root; one written by earlier versions under `pipeline/`."""
    folder = Path(path)
    return str(folder / "pipeline") if (folder / "pipeline" / "model_index.json").is_file() else str(path)


def finalize(work: Path, out: Path) -> None:
    """Scrub absolute paths from the finished run, then move it into place; an existing folder (only with
    --overwrite) is replaced at the end."""
    scrub_folder(work)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, out)


# --- no absolute paths in saved files ---------------------------------------------------------------------------
def display_path(value):
    """An absolute path as `embedded:NAME`, a path relative to the working folder, or `<local>/NAME`; any other
    value unchanged."""
    if not isinstance(value, str) or not os.path.isabs(value):
        return value
    path = Path(value).resolve()
    for root, prefix in ((ASSETS.resolve(), EMBEDDED_PREFIX), (Path.cwd().resolve(), "./")):
        if path == root or root in path.parents:
            return prefix + (str(path.relative_to(root)) or ".")
    return f"<local>/{path.name}"


def scrub(value):
    """`value` (nested dicts / lists) with every absolute path replaced by `display_path`."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return display_path(value)


def scrub_folder(folder: Path) -> None:
    """Rewrite the run's JSON and YAML files (diffusers' `_name_or_path` included) without absolute paths."""
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            clean = scrub(data)
            if clean != data:
                write_json(path, clean)
        elif path.name == CONFIG_FILE:
            data = yaml.safe_load(path.read_text())
            path.write_text(yaml.safe_dump(scrub(data), sort_keys=False))


def hub_id(source) -> str | None:
    """`source` when it names a Hub repository (not an embedded model or a local folder), else None."""
    if isinstance(source, str) and HUB_ID.match(source) and not source.startswith(EMBEDDED_PREFIX) \
            and not Path(source).exists():
        return source
    return None


def environment(num_processes: int, device, mixed_precision: str) -> dict:
    """What ran the job, for report.json."""
    import accelerate
    import diffusers
    import torch
    import transformers

    from .version import __version__

    name = torch.cuda.get_device_name(device) if getattr(device, "type", str(device)) == "cuda" \
        else (platform.processor() or platform.machine())
    return {"processes": num_processes, "device": str(device), "device_name": name,
            "mixed_precision": mixed_precision, "python": platform.python_version(),
            "versions": {"diffunlearn": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                         "accelerate": accelerate.__version__, "transformers": transformers.__version__}}
