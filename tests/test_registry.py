"""The five extension kinds register the same way: in their own file, a taken name refused, lookups by name."""

import pytest

from diffunlearn.errors import UserError
from diffunlearn.registry import (ATTACKS, FAMILIES, JUDGES, METHODS, RECIPES, JudgeKind, RecipeKind, get_attack,
                                  get_family, get_judge, get_method, get_recipe, register_attack, register_judge,
                                  register_method, register_recipe)


def test_each_kind_lists_what_its_package_registers():
    assert {"sfr_on", "esd", "uce", "salun", "ga", "rl", "sa", "ft"} <= set(METHODS.names())
    assert {"ddpm", "dit", "sd", "sd3", "sdxl"} <= set(FAMILIES.names())
    assert {"completion", "relearning", "inversion", "unlearndiffatk", "ring_a_bell"} <= set(ATTACKS.names())
    assert set(JUDGES.names()) == {"digits", "image-classification", "clip", "nudenet"}
    assert {"ddpm", "dit", "sd", "sd3", "sdxl", "vae", "classifier"} <= set(RECIPES.names())
    assert get_method("sfr_on").name == "sfr_on" and get_family("ddpm").family == "ddpm"
    assert get_attack("completion").name == "completion"
    assert isinstance(get_judge("digits"), JudgeKind) and isinstance(get_recipe("ddpm"), RecipeKind)


@pytest.mark.parametrize("lookup, kind", [(get_method, "method"), (get_family, "model family"),
                                          (get_attack, "attack"), (get_judge, "eval.judge"), (get_recipe, "recipe")])
def test_an_unknown_name_is_a_one_line_error_naming_the_valid_ones(lookup, kind):
    with pytest.raises(UserError, match=rf"^unknown {kind} 'nope'; valid: ") as info:
        lookup("nope")
    assert "\n" not in str(info.value)


def test_a_second_entry_under_a_taken_name_is_refused():
    class Impostor:
        name = "sfr_on"

    METHODS.load_all()
    real = METHODS["sfr_on"]
    for register in (register_method, register_attack):
        taken = "sfr_on" if register is register_method else "completion"
        Impostor.name = taken
        with pytest.raises(ValueError, match=f"'{taken}' is registered twice"):
            register(Impostor)
    assert METHODS["sfr_on"] is real
    with pytest.raises(ValueError, match="'digits' is registered twice"):
        register_judge("digits", valid="anything")(lambda source, cfg, device: None)
    with pytest.raises(ValueError, match="'ddpm' is registered twice"):
        register_recipe(RecipeKind("ddpm", object, lambda recipe: None, lambda model, recipe: {}))


def test_the_same_entry_registered_again_is_not_a_duplicate():
    cls = get_method("ga")
    assert register_method(cls) is cls and METHODS["ga"] is cls
