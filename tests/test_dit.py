"""DiT family and latent recipes: tiny DiT / VAE components built from configs, offline, CPU."""

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiTPipeline, DiTTransformer2DModel

from diffunlearn.data.digits import DIGIT_NAMES, LabeledImages
from diffunlearn.errors import UserError
from diffunlearn.models.dit import ClassConditionalDiT, build_dit_pipeline, tiny_dit_config
from diffunlearn.models.latent import decode_latents, encode_latents, tiny_vae_config
from diffunlearn.registry import get_family


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_vae(seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(**tiny_vae_config(channels=(8, 16), norm_num_groups=4)).eval()


def tiny_dit(seed=0, learn_sigma=False, prediction_type="epsilon", patch_size=1) -> ClassConditionalDiT:
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(**tiny_dit_config(hidden=16, heads=2, num_layers=2, patch_size=patch_size,
                                                          learn_sigma=learn_sigma))
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              prediction_type=prediction_type)
    return ClassConditionalDiT(build_dit_pipeline(transformer, tiny_vae(seed), scheduler, DIGIT_NAMES))


def _batch(n=4, seed=0):
    g = _gen(seed)
    return {"pixel_values": torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, "labels": torch.arange(n) % 10}


def test_registered_with_the_stock_pipeline_and_ten_classes():
    model = tiny_dit()
    assert get_family("dit") is ClassConditionalDiT and model.pipeline_class is DiTPipeline
    assert model.num_classes == 10 and model.network is model.pipeline.transformer
    torch.testing.assert_close(model.null_condition(torch.tensor([3, 7])), torch.tensor([1000, 1000]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_training_losses_shape_finite_and_target(prediction_type):
    model = tiny_dit(prediction_type=prediction_type)
    losses = model.training_losses(_batch(), generator=_gen(), cond_drop=0.5, antithetic=True)
    assert losses.shape == (4,) and bool(torch.isfinite(losses).all()) and bool((losses > 0).all())
    losses.mean().backward()
    assert model.network.proj_out_2.weight.grad.abs().sum() > 0
    x0, noise, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([3, 80])
    expected = {"epsilon": noise, "sample": x0,
                "v_prediction": model.noise_scheduler.get_velocity(x0, noise, t)}[prediction_type]
    torch.testing.assert_close(model.training_target(x0, noise, t), expected)


def test_learned_sigma_predict_returns_the_noise_half_and_trains_only_it():
    model = tiny_dit(learn_sigma=True)
    x, t, y = torch.randn(3, 4, 4, 4), torch.tensor([1, 50, 99]), torch.tensor([0, 4, 9])
    full = model.network(x, timestep=t, class_labels=y).sample
    assert full.shape == (3, 8, 4, 4)
    torch.testing.assert_close(model.predict(x, t, y), full[:, :4])
    model.training_losses(_batch(3), generator=_gen()).sum().backward()
    grad = model.network.proj_out_2.weight.grad  # (patch * patch * 8, hidden), output channel fastest; patch 1
    assert grad[:4].abs().sum() > 0 and grad[4:].abs().sum() == 0


def test_internal_label_dropout_is_disabled_in_train_mode():
    model = tiny_dit()
    model.network.train()
    x, t, y = torch.randn(64, 4, 4, 4), torch.full((64,), 50), torch.arange(64) % 10
    outs = [model.network(x, timestep=t, class_labels=y).sample for _ in range(2)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    # the same stock transformer without the wrapper drops labels at random: the check above can fail
    stock = DiTTransformer2DModel.from_config(model.network.config).train()
    stock.load_state_dict(model.network.state_dict())
    torch.manual_seed(0)
    assert not torch.equal(stock(x, timestep=t, class_labels=y).sample, stock(x, timestep=t, class_labels=y).sample)


def test_condition_dropout_uses_the_null_class_1000():
    model = tiny_dit()
    batch = {"pixel_values": torch.rand(64, 1, 8, 8) * 2 - 1, "labels": torch.full((64,), 3)}
    gen = _gen()
    keep = torch.rand(64, generator=gen) >= 0.5  # the first draw training_losses makes
    assert 10 < int(keep.sum()) < 54
    expected = model.training_losses({**batch, "labels": torch.where(keep, 3, 1000)}, generator=gen)
    torch.testing.assert_close(model.training_losses(batch, generator=_gen(), cond_drop=0.5), expected)


def test_refuses_a_transformer_whose_null_class_is_not_1000():
    transformer = DiTTransformer2DModel(**{**tiny_dit_config(hidden=16, heads=2, num_layers=1),
                                           "num_embeds_ada_norm": 10})
    pipe = DiTPipeline(transformer, tiny_vae(), DDPMScheduler(num_train_timesteps=100))
    with pytest.raises(UserError, match="num_embeds_ada_norm=10; valid: 1000"):
        ClassConditionalDiT(pipe)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sample_is_batch_independent_and_guidance_follows_the_convention(sampler):
    model = tiny_dit(patch_size=2)
    labels = torch.tensor([1, 7, 3])
    run = lambda ls, seeds, s=2.0: model.sample(ls, generator=[_gen(k) for k in seeds], num_inference_steps=4,
                                                guidance_scale=s, sampler=sampler)
    batch = run(labels, [10, 11, 12])
    assert batch.shape == (3, 1, 8, 8) and 0 <= batch.min() and batch.max() <= 1
    torch.testing.assert_close(run(labels[1:2], [11]), batch[1:2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(run(torch.tensor([2]), [5], 0.0), run(torch.tensor([8]), [5], 0.0))
    assert not torch.allclose(run(torch.tensor([2]), [5], 1.0), run(torch.tensor([8]), [5], 1.0))
    with pytest.raises(UserError, match="out of range; valid: 0..9"):
        run(torch.tensor([10]), [0])


def test_save_then_stock_dit_pipeline_loads_and_generates_on_cpu(tmp_path):
    model = tiny_dit(seed=3)
    model.save_pretrained(tmp_path)
    pipe = DiTPipeline.from_pretrained(tmp_path, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.get_label_ids(["seven", "zero"]) == [7, 0]
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    stock = pipe(class_labels=[4, 5], guidance_scale=2.0, num_inference_steps=3, generator=[_gen(1), _gen(2)],
                 output_type="pt").images
    ours = model.sample(torch.tensor([4, 5]), generator=[_gen(1), _gen(2)], num_inference_steps=3,
                        guidance_scale=2.0)
    torch.testing.assert_close(stock, ours, atol=1e-5, rtol=1e-4)
    assert len(pipe(class_labels=[1], num_inference_steps=2).images) == 1  # PIL, stock defaults
    reloaded = ClassConditionalDiT.from_pretrained(str(tmp_path))  # names survive a second save
    assert reloaded.num_classes == 10
    reloaded.save_pretrained(tmp_path / "again")
    assert DiTPipeline.from_pretrained(tmp_path / "again").get_label_ids(["nine"]) == [9]


def test_vae_encode_decode_shapes_and_scaling():
    vae = tiny_vae()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    raw = vae.encode(x).latent_dist.mean
    vae.register_to_config(scaling_factor=0.5)
    latents = encode_latents(vae, x)
    assert latents.shape == (5, 4, 4, 4)
    torch.testing.assert_close(latents, raw * 0.5)
    images = decode_latents(vae, latents)
    assert images.shape == (5, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(images, (vae.decode(raw).sample / 2 + 0.5).clamp(0, 1))
    torch.testing.assert_close(tiny_dit().encode(x), encode_latents(tiny_dit().vae, x))


def _toy_digits(n=40):
    g = _gen(1)
    return LabeledImages(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 10)


def test_vae_recipe_smoke_sets_unit_scaled_latents(tmp_path):
    from diffunlearn.recipes.latent import VAERecipe, train_vae

    data = _toy_digits()
    vae = train_vae(VAERecipe(steps=3, batch_size=8, warmup_steps=1, channels=[8, 16]), data, progress=False)
    scaled = encode_latents(vae, data.images * 2 - 1)
    assert scaled.shape == (40, 4, 4, 4) and abs(scaled.std().item() - 1) < 1e-3
    vae.save_pretrained(tmp_path)
    assert AutoencoderKL.from_pretrained(tmp_path).config.scaling_factor == vae.config.scaling_factor


def test_dit_recipe_smoke_with_excluded_classes(tmp_path):
    from diffunlearn.recipes.latent import DiTRecipe, train_dit

    tiny_vae().save_pretrained(tmp_path / "vae")
    recipe = DiTRecipe(steps=3, batch_size=8, warmup_steps=1, hidden=16, heads=2, num_layers=1,
                       vae=str(tmp_path / "vae"), num_train_timesteps=100, exclude_classes=[7])
    model = train_dit(recipe, _toy_digits(), progress=False)
    assert isinstance(model, ClassConditionalDiT) and model.forward_module is None
    before = model.network.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight.clone()
    model.save_pretrained(tmp_path / "dit")
    pipe = DiTPipeline.from_pretrained(tmp_path / "dit")
    assert pipe.get_label_ids(["seven"]) == [7] and isinstance(pipe.scheduler, DDPMScheduler)
    assert not pipe.scheduler.config.clip_sample and pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    torch.testing.assert_close(pipe.transformer.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight,
                               before)
    with pytest.raises(UserError, match="hidden"):
        DiTRecipe(hidden=0)
