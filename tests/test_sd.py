"""The Stable Diffusion family on tiny components built from configs (offline, CPU)."""

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from diffunlearn.errors import UserError
from diffunlearn.models.latent import tiny_vae_config
from diffunlearn.models.sd import StableDiffusion, tiny_sd_unet_config
from diffunlearn.models.text import build_tokenizer, learn_vocabulary, tiny_text_encoder
from diffunlearn.recipes.text_to_image import (CAPTION_TEMPLATES, GENERIC_CAPTION, TextToImageRecipe, caption_table,
                                               caption_vocabulary, digit_prompt, sample_captions, text_to_image_quality,
                                               train_text_to_image)

SEVEN, ONE = digit_prompt(7), digit_prompt(1)


def tiny_sd(seed: int = 0) -> StableDiffusion:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(caption_vocabulary(), model_max_length=12)
    text_encoder = tiny_text_encoder(tokenizer, hidden_size=32, num_heads=2, intermediate_size=64).eval()
    vae = AutoencoderKL(**tiny_vae_config(channels=(8, 16), norm_num_groups=4)).eval()
    unet = UNet2DConditionModel(**tiny_sd_unet_config(channels=(16, 32), cross_attention_dim=32, heads=2,
                                                      norm_num_groups=4))
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              steps_offset=1)
    return StableDiffusion(StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False))


@pytest.fixture
def model():
    return tiny_sd()


def batch_for(model, prompts, anchors=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {"pixel_values": torch.rand(len(prompts), 1, 8, 8, generator=g) * 2 - 1,
             "input_ids": model.tokenize(prompts)}
    if anchors is not None:
        batch["anchor_ids"] = model.tokenize(anchors)
    return batch


def generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def perturb(params, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_family_is_registered():
    from diffunlearn.registry import get_family

    assert get_family("sd") is StableDiffusion
    assert not hasattr(StableDiffusion, "num_classes")  # a concept family


def test_tokenizer_round_trip(model):
    tokenizer = model.pipeline.tokenizer
    prompts = [digit_prompt(d, k) for d in range(10) for k in range(len(CAPTION_TEMPLATES))] + [GENERIC_CAPTION, ""]
    ids = model.tokenize(prompts)
    assert ids.shape == (len(prompts), 12) and ids.dtype == torch.long
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == prompts
    for word in caption_vocabulary():  # every caption word is one token
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1
    assert learn_vocabulary(reversed(caption_vocabulary())) == learn_vocabulary(caption_vocabulary())


@pytest.mark.parametrize("prompt, named", [("a handwritten digit 7", "7"), ("a handwritten cat", "cat"),
                                           ("a handwritten 7 cat", "7, cat")])
def test_tokenize_refuses_unknown_words(model, prompt, named):
    with pytest.raises(UserError, match=f"cannot encode: {named}$") as info:
        model.tokenize([SEVEN, prompt])
    assert repr(prompt) in str(info.value) and "\n" not in str(info.value)


def test_tokenize_refuses_too_long_prompt(model):
    prompt = " ".join(["seven"] * 11)  # 11 words + start and end tokens = 13 > 12
    with pytest.raises(UserError, match="is 13 tokens long; the tokenizer takes at most 12"):
        model.tokenize([prompt])
    assert model.tokenize([" ".join(["seven"] * 10)]).shape == (1, 12)


def test_condition_matches_stock_prompt_encoding(model):
    ids = model.tokenize([SEVEN, ""])
    stock, _ = model.pipeline.encode_prompt([SEVEN, ""], "cpu", 1, False)
    torch.testing.assert_close(model.condition({"input_ids": ids}), stock)
    torch.testing.assert_close(model.null_condition(stock)[0], stock[1])


def test_losses_shapes_and_anchor(model):
    batch = batch_for(model, [SEVEN, ONE, SEVEN], anchors=[GENERIC_CAPTION] * 3)
    g = torch.Generator().manual_seed(0)
    losses = model.training_losses(batch, generator=g, cond_drop=0.5, antithetic=True)
    assert losses.shape == (3,) and torch.isfinite(losses).all()
    assert model.training_losses(batch, generator=g, guidance_scale=2.0).shape == (3,)
    anchored = model.anchored_losses(batch, generator=torch.Generator().manual_seed(1))
    assert anchored.shape == (3,) and (anchored > 0).all()
    anchored.sum().backward()
    assert model.network.conv_in.weight.grad is not None  # gradient through the forget branch only
    assert all(p.grad is None for p in model.pipeline.text_encoder.parameters())
    same = dict(batch, anchor_ids=batch["input_ids"])
    assert model.anchored_losses(same, generator=torch.Generator().manual_seed(1)).abs().max() < 1e-10


def test_drop_condition_uses_empty_prompt(model):
    cond = model.condition({"input_ids": model.tokenize([SEVEN, ONE])})
    dropped = model.drop_condition(cond, torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], cond[0])
    torch.testing.assert_close(dropped[1], model.condition({"input_ids": model.tokenize([""])})[0])


@pytest.mark.parametrize("subset", ["all", "cross_attention", "lora"])
def test_trainable_subsets(model, subset):
    model.set_trainable(subset, lora_rank=2)
    names = [n for n, _ in model.trainable_parameters()]
    every = [n for n, _ in model.network.named_parameters()]
    if subset == "all":
        assert names == every
    elif subset == "cross_attention":
        assert names and names == [n for n in every if ".attn2." in n]
    else:
        assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
        assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names} == {"to_q", "to_k", "to_v", "0"}
    assert not any(p.requires_grad for p in model.pipeline.text_encoder.parameters())
    assert not any(p.requires_grad for p in model.pipeline.vae.parameters())


def test_unknown_subset_is_refused(model):
    with pytest.raises(UserError, match="unknown model.subset for the sd family 'attn'; valid: all, cross_attention"):
        model.set_trainable("attn")


def test_sample_is_batch_independent(model):
    ids = model.tokenize([SEVEN, ONE, GENERIC_CAPTION])
    for sampler in ("ddim", "ddpm"):
        together = model.sample(ids, generators(1, 2, 3), 4, 2.0, sampler=sampler)
        assert together.shape == (3, 1, 8, 8) and 0 <= together.min() and together.max() <= 1
        alone = model.sample(ids[1:2], generators(2), 4, 2.0, sampler=sampler)
        torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="guidance_scale 0.5"):
        model.sample(ids, generators(1, 2, 3), 4, 0.5)


def stock_images(pipe, prompts, seeds, steps=4):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompts, guidance_scale=2.0, num_inference_steps=steps, generator=generators(*seeds),
                output_type="pt").images


def test_save_loads_in_stock_pipeline(model, tmp_path):
    model.set_trainable("all")
    perturb(model.network.parameters())
    model.save_pretrained(tmp_path)
    stock = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert stock.safety_checker is None
    images = stock_images(stock, [SEVEN, ONE], [5, 6])
    assert images.shape == (2, 1, 8, 8)
    ours = model.sample(model.tokenize([SEVEN, ONE]), generators(5, 6), 4, 2.0, sampler="ddpm")  # the saved one
    torch.testing.assert_close(images, ours, atol=1e-5, rtol=0)
    reloaded = StableDiffusion.from_pretrained(str(tmp_path))
    torch.testing.assert_close(reloaded.sample(model.tokenize([SEVEN]), generators(5), 4, 2.0, sampler="ddpm"),
                               ours[:1])


def test_lora_saves_fused_pipeline_and_adapter(model, tmp_path):
    model.save_pretrained(tmp_path / "base")
    model.set_trainable("lora", lora_rank=2)
    ids = model.tokenize([SEVEN, ONE])
    before = model.sample(ids, generators(5, 6), 4, 2.0, sampler="ddpm")
    perturb([p for _, p in model.trainable_parameters()], scale=0.3)  # an "unlearned" adapter
    unlearned = model.sample(ids, generators(5, 6), 4, 2.0, sampler="ddpm")
    assert (unlearned - before).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "out")
    assert model.has_lora  # the live model keeps its adapters, unfused
    torch.testing.assert_close(model.sample(ids, generators(5, 6), 4, 2.0, sampler="ddpm"), unlearned)
    fused = StableDiffusionPipeline.from_pretrained(tmp_path / "out")
    assert not any("lora" in n for n, _ in fused.unet.named_parameters())
    torch.testing.assert_close(stock_images(fused, [SEVEN, ONE], [5, 6]), unlearned, atol=1e-4, rtol=0)
    base = StableDiffusionPipeline.from_pretrained(tmp_path / "base")
    torch.testing.assert_close(stock_images(base, [SEVEN, ONE], [5, 6]), before, atol=1e-5, rtol=0)
    base.load_lora_weights(tmp_path / "out" / "lora")
    torch.testing.assert_close(stock_images(base, [SEVEN, ONE], [5, 6]), unlearned, atol=1e-5, rtol=0)


def test_caption_sampling_covers_templates_generic_and_empty(model):
    table = caption_table(model)
    recipe = TextToImageRecipe(cond_drop=0.2, generic_prob=0.3)
    labels = torch.full((4000,), 7)
    ids = sample_captions(table, labels, recipe, torch.Generator().manual_seed(0))
    texts = model.pipeline.tokenizer.batch_decode(ids, skip_special_tokens=True)
    shares = {t: texts.count(t) / len(texts) for t in set(texts)}
    assert set(shares) == {digit_prompt(7, k) for k in range(len(CAPTION_TEMPLATES))} | {GENERIC_CAPTION, ""}
    assert abs(shares[""] - 0.2) < 0.03 and abs(shares[GENERIC_CAPTION] - 0.3) < 0.03


def test_recipe_trains_and_reports_quality(tmp_path):
    recipe = TextToImageRecipe(steps=3, batch_size=8, warmup_steps=1, vae="random", channels=[16, 32],
                               norm_num_groups=8, text_hidden_size=32, text_heads=2, quality_samples=2)
    model = train_text_to_image(recipe, progress=False)
    assert not any(p.requires_grad for p in model.pipeline.text_encoder.parameters())
    quality = text_to_image_quality(model, recipe)["prompt_accuracy"]
    assert set(quality["per_prompt"]) == {digit_prompt(d) for d in range(10)}
    assert all(0 <= v <= 1 for v in quality["per_prompt"].values())
    model.save_pretrained(tmp_path)
    assert StableDiffusionPipeline.from_pretrained(tmp_path).tokenizer.model_max_length == recipe.max_length
