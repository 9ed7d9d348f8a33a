"""The value checks every config section shares (one-line `UserError`s naming the key and what is valid)."""

from __future__ import annotations

import numbers

from .errors import UserError, choice_error

SEED_MAX = 2 ** 32 - 1  # numpy's bound (np.random.seed via accelerate's set_seed, sklearn's random_state)


def check_positive(section: str, **values) -> None:
    for key, value in values.items():
        if value is None or value <= 0:
            raise UserError(f"{section}.{key} must be > 0, got {value!r}")


def check_seed(section: str, **values) -> None:
    """Seeds are integers in 0..2**32-1 (numpy refuses anything else, deep inside a run)."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value <= SEED_MAX:
            name = f"{section}.{key}" if section else key
            raise UserError(f"{name} must be an integer in 0..{SEED_MAX} (2**32 - 1: the seeds numpy accepts), "
                            f"got {value!r}")


def check_class_ids(key: str, classes) -> None:
    if classes and (len(set(classes)) != len(classes) or min(classes) < 0):
        raise UserError(f"{key} must be distinct non-negative class ids, got {list(classes)}")


def check_choice(section: str, key: str, value, valid) -> None:
    if value not in valid:
        raise choice_error(f"{section}.{key}", value, valid)
