"""A loaded YAML config checked as a tree before anything else touches it: plain values only (a date or `!!binary` is
refused, naming its key), string keys, at most MAX_DEPTH levels and MAX_VALUES values once YAML aliases are expanded
(an alias bomb, "billion laughs", is refused in milliseconds instead of expanding for minutes), and no alias that
contains itself.
"""

from __future__ import annotations

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError

MAX_VALUES = 100_000  # values in a config once YAML aliases are expanded (a run config holds a few hundred)
MAX_DEPTH = 32  # nesting levels (a run config has 3)
PLAIN = (str, int, float, bool, type(None))


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class _Tree:
    """Checks a loaded YAML tree (shared objects are what YAML aliases load to; counted once per use)."""

    def __init__(self, where: str):
        self.where, self.sizes, self.active, self.aliased = where, {}, set(), False

    def size(self, value, key: str = "", depth: int = 0) -> int:
        if isinstance(value, str) and "${" in value:  # an interpolation: its grammar, checked here to name the key
            try:
                OmegaConf.create({"value": value})
            except OmegaConfBaseException as exc:
                raise UserError(f"{self.where}: config key {key!r} holds a malformed interpolation {value!r} "
                                f"({first_line(exc)}); write \\${{ for a literal '${{'") from None
        if isinstance(value, PLAIN):
            return 1
        if not isinstance(value, (dict, list, tuple)):
            raise UserError(f"{self.where}: config key {key!r} has a {type(value).__name__} value {value!r}; valid: "
                            "numbers, strings, true/false, null, lists and mappings (quote it to make it a string)")
        ident = id(value)
        if ident in self.sizes:  # a YAML alias (or a shared object): counted in full at every use
            self.aliased = True
            return self.sizes[ident]
        if ident in self.active:
            raise UserError(f"{self.where}: config key {key!r} contains itself through a YAML alias; valid: aliases "
                            "of values defined before them, not of an enclosing list or mapping")
        if depth >= MAX_DEPTH:
            raise UserError(f"{self.where} nests deeper than {MAX_DEPTH} levels at config key {key!r}")
        self.active.add(ident)
        total = 1
        if isinstance(value, dict):
            for k, item in value.items():
                if not isinstance(k, str):
                    raise UserError(f"{self.where}: key {k!r} {f'under {key!r} ' if key else ''}is not a string "
                                    f"({type(k).__name__}); quote it (e.g. '{k}':)")
                total += self.size(item, f"{key}.{k}" if key else k, depth + 1)
                self._check_total(total, key)
        else:
            for i, item in enumerate(value):
                total += self.size(item, f"{key}[{i}]", depth + 1)
                self._check_total(total, key)
        self.active.discard(ident)
        self.sizes[ident] = total
        return total

    def _check_total(self, total: int, key: str) -> None:
        if total > MAX_VALUES:
            at = f" (at config key {key!r})" if key else ""
            if self.aliased:
                raise UserError(f"{self.where} expands to more than {MAX_VALUES} values through YAML aliases{at}; "
                                "a run config holds a few hundred: refusing an alias bomb ('billion laughs')")
            raise UserError(f"{self.where} holds more than {MAX_VALUES} values{at}; a run config holds a few hundred")


def check_tree(value, where: str = "the config") -> None:
    """Refuse what OmegaConf cannot take, or would take minutes over: see the module docstring."""
    _Tree(where).size(value)
