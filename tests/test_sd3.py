"""The SD3 family (flow matching) on tiny components built from configs (offline, CPU): the flow-matching pieces
against their definitions, the packed conditions against the stock pipeline's own prompt encoding, tokenizer_2's
padding, subsets, LoRA saving, one-line refusals. Save / load / stock sampling, every method and resume are rows
of test_matrix.py; SFR-on's mask and steps rows of test_families.py."""

import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from helpers import assert_recipe_trained

from diffunlearn.errors import UserError
from diffunlearn.models.sd3 import CONTEXT_PROJECTIONS, StableDiffusion3
from diffunlearn.recipes.text_to_image import digit_prompt
from diffunlearn.recipes.text_to_image_sd3 import SD3Recipe, build_sd3, tiny_clip_with_projection

SEVEN, ONE = digit_prompt(7), digit_prompt(1)
TINY = dict(vae="random", layers=2, heads=2, head_dim=8, text_hidden_size=32, text_layers=2, text_heads=2,
            projection_dim=16, max_length=12, num_train_timesteps=100)


def tiny_sd3(seed: int = 0, shift: float = 1.0) -> StableDiffusion3:
    torch.manual_seed(seed)
    return build_sd3(SD3Recipe(**TINY, shift=shift))


@pytest.fixture(scope="module")
def model():
    return tiny_sd3(shift=3.0)


def test_family_is_registered():
    from diffunlearn.registry import get_family

    assert get_family("sd3") is StableDiffusion3


def test_flow_matching_noising_target_and_timesteps_follow_the_scheduler(model):
    """x_t = (1 - sigma) x_0 + sigma eps with sigma from the training scheduler's table (its shift included;
    larger t is noisier), target v = eps - x_0, logit-normal timesteps in [0, T) paired u, 1 - u."""
    x0, eps = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    t = torch.tensor([0, 50, 99])
    table = model.noise_scheduler.sigmas  # descending, shift 3
    sigma = table[len(table) - 1 - t]
    torch.testing.assert_close(model.add_noise(x0, eps, t), (1 - sigma[:, None, None, None]) * x0 +
                               sigma[:, None, None, None] * eps)
    assert float(model.sigmas(torch.tensor([99]))) == 1.0 and bool((model.sigmas(t).diff() > 0).all())
    assert float(model.sigmas(torch.tensor([50]))) > 0.51  # the shift moves mid timesteps towards noise
    torch.testing.assert_close(model.training_target(x0, eps, t), eps - x0)
    drawn = model.sample_timesteps(4000, torch.Generator().manual_seed(0), antithetic=True)
    assert drawn.dtype == torch.long and int(drawn.min()) >= 0 and int(drawn.max()) <= 99
    pairs = drawn[:2000] + drawn[2000:]
    assert bool(((pairs - 99).abs() <= 1).all())  # u and 1 - u land on mirrored table indices
    middle = ((drawn >= 25) & (drawn < 75)).float().mean()
    assert middle > 0.6  # logit-normal: most mass mid-range (uniform would give 0.5)


def test_conditions_are_what_the_stock_pipeline_encodes(model):
    """The packed condition unpacks to exactly the stock pipeline's `encode_prompt` outputs (both CLIPs'
    penultimate states side by side, padded; 256 zero T5 rows; pooled projections concatenated)."""
    prompts = [SEVEN, "", "a handwritten digit"]
    states, pooled = model.unpack(model.encode_prompt_ids(model.tokenize(prompts)))
    ref_states, _, ref_pooled, _ = model.pipeline.encode_prompt(prompts, None, None, do_classifier_free_guidance=False,
                                                                max_sequence_length=256)
    assert states.shape == ref_states.shape == (3, 12 + 256, 64)
    torch.testing.assert_close(states, ref_states)
    torch.testing.assert_close(pooled, ref_pooled)


def test_predict_is_the_transformer_on_sigma_times_t(model):
    x_t, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 80])
    cond = model.encode_prompt_ids(model.tokenize([SEVEN, ONE]))
    states, pooled = model.unpack(cond)
    with torch.no_grad():
        direct = model.network(hidden_states=x_t, timestep=model.sigmas(t) * 100, encoder_hidden_states=states,
                               pooled_projections=pooled).sample
        torch.testing.assert_close(model.predict(x_t, t, cond), direct)


def test_token_embeddings_of_the_table_give_the_plain_conditions(model):
    """Attacks' relaxed tokens: the two encoders' tables side by side; their rows of the ids reproduce the plain
    encoding, and other rows change it."""
    ids = model.tokenize([SEVEN])
    table = model.token_embedding_table()
    assert table.shape[1] == 64  # 32 + 32
    plain = model.encode_prompt_ids(ids)
    torch.testing.assert_close(model.encode_token_embeddings(ids, table[ids]), plain)
    other = model.encode_token_embeddings(ids, table[model.tokenize([ONE])])
    assert not torch.allclose(other, plain)


def test_tokenizer_2_gets_its_own_padding_after_the_end_token():
    """SD3's second CLIP tokenizer shares the vocabulary but pads with its own token: its ids are the first's with
    that padding after the end token (and the same ids when the padding is the same)."""
    import copy

    model = tiny_sd3()
    ids = model.tokenize([SEVEN])
    assert torch.equal(model.second_ids(ids), ids)
    other = copy.deepcopy(model.pipeline.tokenizer)
    other.pad_token = "a"  # a vocabulary token of its own as padding (SD3's tokenizer_2 pads with "!")
    model.pipeline.tokenizer_2 = other
    end = int((ids[0] == model.pipeline.tokenizer.eos_token_id).nonzero()[0])
    swapped = model.second_ids(ids)
    assert torch.equal(swapped[0, :end + 1], ids[0, :end + 1]) and end + 1 < ids.shape[1]
    assert bool((swapped[0, end + 1:] == other.pad_token_id).all()) and other.pad_token_id != ids[0, -1]


def test_different_tokenizer_vocabularies_are_refused_in_one_line():
    model = tiny_sd3()
    from diffunlearn.models.text import build_tokenizer

    other = build_tokenizer(["a", "digit", "cat"], model_max_length=12)
    pipe = StableDiffusion3Pipeline(**{**model.pipeline.components, "tokenizer_2": other})
    with pytest.raises(UserError, match="different vocabularies"):
        StableDiffusion3(pipe)


def test_subsets_train_what_they_name():
    model = tiny_sd3()
    model.set_trainable("cross_attention")
    names = [n for n, _ in model.trainable_parameters()]
    assert names and all(any(f".attn.{m}." in n for m in CONTEXT_PROJECTIONS) for n in names)
    assert {m for m in CONTEXT_PROJECTIONS} <= {n.split(".")[3] for n in names}
    assert not any(p.requires_grad for e in model.text_encoders() for p in e.parameters())
    model.set_trainable("all")
    assert len(model.trainable_parameters()) == len(list(model.network.parameters()))
    with pytest.raises(UserError, match="unknown model.subset for the sd3 family 'x'"):
        model.set_trainable("x")


def test_lora_saves_a_fused_folder_and_an_adapter_the_stock_pipeline_loads(tmp_path):
    model = tiny_sd3()
    model.save_pretrained(tmp_path / "base")
    model.set_trainable("lora", lora_rank=2)
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.05)
    model.save_pretrained(tmp_path / "run")
    gen = [torch.Generator().manual_seed(0)]
    ours = model.sample(model.tokenize([SEVEN]), gen, 2, 2.0)
    fused = StableDiffusion3Pipeline.from_pretrained(tmp_path / "run", text_encoder_3=None, tokenizer_3=None)
    base = StableDiffusion3Pipeline.from_pretrained(tmp_path / "base", text_encoder_3=None, tokenizer_3=None)
    base.load_lora_weights(tmp_path / "run" / "lora")
    for pipe in (fused, base):
        images = pipe(SEVEN, num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                      output_type="pt", height=8, width=8).images
        assert (images - ours).abs().max() < 1e-4


def test_samplers_are_checked_per_family():
    from diffunlearn.registry import get_family

    with pytest.raises(UserError, match="eval.sampler 'ddim' is not supported by the sd3 family"):
        tiny_sd3().check_sampler("ddim")
    with pytest.raises(UserError, match="eval.sampler 'euler' is not supported by the sd family"):
        get_family("sd").check_sampler(get_family("sd").__new__(get_family("sd")), "euler")


def test_the_recipe_trains_the_transformer_and_both_text_encoders(tmp_path):
    """Two steps of the flow-matching recipe move the transformer and both CLIPs; afterwards the encoders are
    frozen and the model samples."""
    from diffunlearn.recipes.text_to_image_sd3 import train_sd3

    recipe = SD3Recipe(**{**TINY, "steps": 2, "batch_size": 8, "warmup_steps": 1})
    torch.manual_seed(0)
    before = build_sd3(recipe)
    assert_recipe_trained(before, train_sd3(recipe, progress=False), SEVEN)


def test_tiny_clip_with_projection_matches_the_tokenizer():
    from diffunlearn.models.text import build_tokenizer

    tok = build_tokenizer(["a", "digit"], model_max_length=8)
    encoder = tiny_clip_with_projection(tok, 16, 1, 2, 8)
    out = encoder(tok(["a digit"], padding="max_length", max_length=8, return_tensors="pt").input_ids)
    assert out.text_embeds.shape == (1, 8) and out.last_hidden_state.shape == (1, 8, 16)
