"""The SDXL family on tiny components built from configs (offline, CPU): the packed conditions and time ids against
the stock pipeline's own, the null condition, subsets, LoRA saving. Save / load / stock sampling, every method and
resume are rows of test_matrix.py; SFR-on's mask and steps rows of test_families.py."""

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from helpers import assert_recipe_trained
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffunlearn.models.latent import tiny_vae_config
from diffunlearn.models.sdxl import StableDiffusionXL
from diffunlearn.models.text import build_tokenizer, tiny_text_encoder_config
from diffunlearn.recipes.text_to_image import caption_vocabulary, digit_prompt

SEVEN, ONE = digit_prompt(7), digit_prompt(1)


def tiny_sdxl(seed: int = 0, force_zeros: bool = True) -> StableDiffusionXL:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(caption_vocabulary(), model_max_length=12)
    text = tiny_text_encoder_config(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    encoder = CLIPTextModel(CLIPTextConfig(**text)).eval()
    encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=16)).eval()
    vae = AutoencoderKL(**tiny_vae_config(channels=(8, 16), norm_num_groups=4)).eval()
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        cross_attention_dim=64, attention_head_dim=2, norm_num_groups=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8)
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              steps_offset=1)
    return StableDiffusionXL(StableDiffusionXLPipeline(
        vae=vae, text_encoder=encoder, text_encoder_2=encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
        scheduler=scheduler, force_zeros_for_empty_prompt=force_zeros, add_watermarker=False))


@pytest.fixture(scope="module")
def model():
    return tiny_sdxl()


def test_family_is_registered():
    from diffunlearn.registry import get_family

    assert get_family("sdxl") is StableDiffusionXL


def test_conditions_are_what_the_stock_pipeline_encodes(model):
    """The packed condition unpacks to the stock `encode_prompt` outputs: both CLIPs' penultimate states side by
    side, text_encoder_2's pooled projection; the null condition is the pipeline's negative (zeros here)."""
    prompts = [SEVEN, "a handwritten digit"]
    cond = model.encode_prompt_ids(model.tokenize(prompts))
    states, pooled = model.unpack(cond)
    ref, neg, ref_pooled, neg_pooled = model.pipeline.encode_prompt(prompts, do_classifier_free_guidance=True)
    assert states.shape == ref.shape == (2, 12, 64)
    torch.testing.assert_close(states, ref)
    torch.testing.assert_close(pooled, ref_pooled)
    null_states, null_pooled = model.unpack(model.null_condition(cond))
    torch.testing.assert_close(null_states, neg)
    torch.testing.assert_close(null_pooled, neg_pooled)


def test_without_force_zeros_the_null_condition_is_the_empty_prompt():
    model = tiny_sdxl(force_zeros=False)
    cond = model.encode_prompt_ids(model.tokenize([SEVEN]))
    _, neg, _, neg_pooled = model.pipeline.encode_prompt([SEVEN], do_classifier_free_guidance=True)
    null_states, null_pooled = model.unpack(model.null_condition(cond))
    torch.testing.assert_close(null_states, neg)
    torch.testing.assert_close(null_pooled, neg_pooled)


def test_predict_is_the_unet_with_the_pipelines_time_ids(model):
    x_t, t = torch.randn(2, 4, 4, 4), torch.tensor([10, 80])
    cond = model.encode_prompt_ids(model.tokenize([SEVEN, ONE]))
    states, pooled = model.unpack(cond)
    time_ids = model.pipeline._get_add_time_ids((8, 8), (0, 0), (8, 8), dtype=torch.float32,
                                                text_encoder_projection_dim=16).expand(2, 6)
    with torch.no_grad():
        direct = model.network(x_t, t, encoder_hidden_states=states,
                               added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        torch.testing.assert_close(model.predict(x_t, t, cond), direct)


def test_subsets_and_lora_saving(tmp_path):
    model = tiny_sdxl()
    model.set_trainable("cross_attention")
    names = [n for n, _ in model.trainable_parameters()]
    assert names and all(".attn2." in n for n in names)
    model.save_pretrained(tmp_path / "base")
    model.set_trainable("lora", lora_rank=2)
    with torch.no_grad():
        for _, p in model.trainable_parameters():
            p.add_(0.05)
    model.save_pretrained(tmp_path / "run")
    ours = model.sample(model.tokenize([SEVEN]), [torch.Generator().manual_seed(0)], 2, 2.0)
    fused = StableDiffusionXLPipeline.from_pretrained(tmp_path / "run")
    base = StableDiffusionXLPipeline.from_pretrained(tmp_path / "base")
    base.load_lora_weights(tmp_path / "run" / "lora")
    for pipe in (fused, base):
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # the wrapper's default sampler
        images = pipe(SEVEN, num_inference_steps=2, guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                      output_type="pt", height=8, width=8).images
        assert (images - ours).abs().max() < 1e-4


def test_the_recipe_trains_the_unet_and_both_text_encoders():
    """Two steps of the SDXL recipe move the UNet and both CLIPs; afterwards the encoders are frozen, the null
    condition is the empty prompt (the recipe's caption dropout) and the model samples."""
    from diffunlearn.recipes.text_to_image_sdxl import SDXLRecipe, build_sdxl, train_sdxl

    recipe = SDXLRecipe(vae="random", steps=2, batch_size=8, warmup_steps=1, channels=[16, 32], heads=2,
                        norm_num_groups=4, text_hidden_size=32, text_heads=2, projection_dim=16, max_length=12,
                        num_train_timesteps=100)
    torch.manual_seed(0)
    before = build_sdxl(recipe)
    model = train_sdxl(recipe, progress=False)
    assert_recipe_trained(before, model, SEVEN)
    assert not model.pipeline.config.force_zeros_for_empty_prompt
