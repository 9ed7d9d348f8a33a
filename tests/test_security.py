"""Security: YAML is loaded safely, no code path loads pickles or remote code, outputs stay inside their folder."""

import ast
from pathlib import Path

import pytest

from diffunlearn.commands.cli import main
from diffunlearn.evaluation.gallery import file_stem

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("diffunlearn", "pipelines", "eval") for p in (ROOT / d).rglob("*.py"))


def test_a_yaml_python_tag_is_refused_and_never_runs(capsys, tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"method: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SystemExit) as info:
        main(["unlearn", str(config), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and len(err.splitlines()) == 1 and "is not valid YAML" in err, err
    assert not marker.exists() and not (tmp_path / "run").exists()


def _calls(tree):
    """(owner, name, keywords) of every call: owner is the dotted-off name (`yaml` in `yaml.load`), "" for a bare
    call, None for anything else (`x().y`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func, kwargs = node.func, {k.arg: k.value for k in node.keywords}
            if isinstance(func, ast.Name):
                yield "", func.id, kwargs
            elif isinstance(func, ast.Attribute):
                yield (func.value.id if isinstance(func.value, ast.Name) else None), func.attr, kwargs


def test_no_source_loads_pickles_remote_code_or_unsafe_yaml():
    assert len(SOURCES) > 40, "the scan must see the package"
    offences = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                offences += [f"{path.name}: imports {n}" for n in names if n in ("pickle", "dill", "cloudpickle")]
        for owner, name, kwargs in _calls(tree):
            flag = kwargs.get("trust_remote_code")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                offences.append(f"{path.name}: {name}(trust_remote_code=...)")
            weights_only = kwargs.get("weights_only")
            if name == "load" and "weights_only" in kwargs and not (
                    isinstance(weights_only, ast.Constant) and weights_only.value is True):
                offences.append(f"{path.name}: load(weights_only=...) not True")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
                offences.append(f"{path.name}: yaml.{name}")
            if owner == "" and name in ("eval", "exec"):
                offences.append(f"{path.name}: {name}()")
        text = path.read_text()
        offences += [f"{path.name}: torch.load without weights_only=True" for line in text.splitlines()
                     if "torch.load(" in line and "weights_only=True" not in line]
    assert not offences, offences


@pytest.mark.parametrize("prompt", ["../../etc/passwd", "/abs/path", "a\\b", "..", "a nude person; rm -rf /", ""])
def test_gallery_file_names_of_prompts_stay_inside_the_gallery(tmp_path, prompt):
    stem = file_stem(prompt, 7)
    assert stem.startswith("007-") and "/" not in stem and "\\" not in stem and ".." not in stem
    target = (tmp_path / "gallery" / f"base_{stem}.png").resolve()
    assert target.parent == (tmp_path / "gallery").resolve()
