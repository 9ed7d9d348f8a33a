"""Visual prompts on vision transformers and Fast-NTK over them, against exact oracles: the prompted forward equals a
hand-written VPT forward, the prompt Jacobian equals a per-sample autograd loop, the squared-loss prompt+head scrub
equals ridge solutions on explicit Jacobian features, primal equals dual; copies, saving and errors."""

import copy

import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from diffunlearn import (add_visual_prompts, fast_ntk_scrub, load_visual_prompts, remove_visual_prompts,
                         save_visual_prompts)
from diffunlearn.errors import UserError
from diffunlearn.ntk.rows import JacobianRows
from diffunlearn.ntk.subset import select_subset

CLASSES = 4


def tiny_vit(seed=0, layers=2):
    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
                       image_size=8, patch_size=4, num_channels=1, num_labels=CLASSES)
    return ViTForImageClassification(config).eval()


def images(n, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def labels(n, seed=0):
    return torch.randint(CLASSES, (n,), generator=torch.Generator().manual_seed(seed))


def vpt_forward(model, x, tokens):
    """VPT written out: [CLS, prompts, patches] into the layers; deep prompts replace positions 1..p per layer."""
    vit = model.vit
    hidden = vit.embeddings(x)
    p = tokens.shape[1]
    for i, layer in enumerate(vit.layers):
        if i == 0:
            hidden = torch.cat([hidden[:, :1], tokens[0].expand(len(x), -1, -1), hidden[:, 1:]], 1)
        elif tokens.shape[0] > 1:
            hidden = torch.cat([hidden[:, :1], tokens[i].expand(len(x), -1, -1), hidden[:, 1 + p:]], 1)
        hidden = layer(hidden)
    return model.classifier(vit.layernorm(hidden)[:, 0])


@pytest.mark.parametrize("deep", [False, True])
def test_prompted_forward_equals_the_written_out_vpt_forward(deep):
    model = tiny_vit()
    x = images(3)
    plain = model(x).logits
    prompts = add_visual_prompts(model, num_tokens=3, deep=deep)
    assert prompts.tokens.shape == (2 if deep else 1, 3, 16)
    assert [n for n, _ in model.named_parameters() if "visual_prompts" in n] == ["visual_prompts.tokens"]
    out = model(x, output_hidden_states=True)
    assert out.hidden_states[-1].shape == (3, 1 + 3 + 4, 16)  # CLS, 3 prompts, 4 patches
    assert not torch.allclose(out.logits, plain)
    tokens = prompts.tokens.detach().clone()
    remove_visual_prompts(model)  # the layers run unhooked again: the written-out forward inserts the prompts
    torch.testing.assert_close(model(x).logits, plain)
    torch.testing.assert_close(out.logits, vpt_forward(model, x, tokens), rtol=1e-5, atol=1e-6)


def test_a_deep_copy_has_prompts_of_its_own():
    model = tiny_vit()
    add_visual_prompts(model, num_tokens=2)
    x = images(2)
    before = model(x).logits
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.visual_prompts.tokens.mul_(-3.0)  # (a constant shift would vanish in the LayerNorms)
    assert not torch.allclose(twin(x).logits, before)
    torch.testing.assert_close(model(x).logits, before)


def test_prompts_save_and_load_as_safetensors(tmp_path):
    model = tiny_vit()
    prompts = add_visual_prompts(model, num_tokens=2, deep=True, seed=3)
    x = images(2)
    path = save_visual_prompts(model, tmp_path)
    assert path.name == "visual_prompts.safetensors"
    fresh = tiny_vit()
    loaded = load_visual_prompts(fresh, tmp_path)
    assert loaded.deep and torch.equal(loaded.tokens, prompts.tokens)
    torch.testing.assert_close(fresh(x).logits, model(x).logits)


def test_the_prompt_subset_jacobian_equals_a_per_sample_autograd_loop():
    model = tiny_vit()
    add_visual_prompts(model, num_tokens=3, deep=True)
    names = select_subset(model, "prompt+head").names
    assert set(names) == {"visual_prompts.tokens", "classifier.weight", "classifier.bias"}
    rows = JacobianRows(model, names, None, num_classes=CLASSES, loss="ce", chunk_size=2)
    x = images(4)
    jac, logits = rows.jacobians(x)
    params = dict(model.named_parameters())
    for i in range(len(x)):
        out = model(x[i:i + 1]).logits[0]
        torch.testing.assert_close(logits[i], out, rtol=1e-5, atol=1e-6)
        for c in range(CLASSES):
            grads = torch.autograd.grad(out[c], [params[n] for n in names], retain_graph=True)
            torch.testing.assert_close(jac[i, c], torch.cat([g.reshape(-1) for g in grads]), rtol=1e-4, atol=1e-6)


def _explicit_features(model, names, x):
    """G (N*C, P) by autograd, rows (sample, class), and logits (N, C), in float64."""
    params = dict(model.named_parameters())
    rows, outs = [], []
    for i in range(len(x)):
        out = model(x[i:i + 1]).logits[0]
        outs.append(out.detach())
        for c in range(CLASSES):
            grads = torch.autograd.grad(out[c], [params[n] for n in names], retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).double(), torch.stack(outs).double()


@pytest.mark.parametrize("deep", [False, True])
def test_squared_loss_prompt_head_scrub_equals_ridge_solutions_on_explicit_jacobian_features(deep):
    model = tiny_vit().double()
    add_visual_prompts(model, num_tokens=2, deep=deep)
    model.double()
    x, y = images(14).double(), labels(14)
    forget, retain = (x[:4], y[:4]), (x[4:], y[4:])
    wd = 1e-2
    result = fast_ntk_scrub(model, forget, retain, subset="prompt+head", loss="mse", weight_decay=wd, cache=False,
                            init="current")
    names = result.info["subset_params"]
    params = dict(model.named_parameters())
    w0 = torch.cat([params[n].detach().reshape(-1) for n in names]).double()

    def w_lin(xs, ys):
        g, f = _explicit_features(model, names, xs)
        r = (f - nn.functional.one_hot(ys, CLASSES).double()).reshape(-1)
        system = g.T @ g + len(ys) * wd * torch.eye(g.shape[1], dtype=torch.float64)
        return w0 - torch.linalg.solve(system, g.T @ r)

    expected = w0 + w_lin(*retain) - w_lin(x, y)
    got = torch.cat([dict(result.model.named_parameters())[n].detach().reshape(-1) for n in names])
    assert (got - w0).norm() > 1e-3, "the forget set must matter"
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("subset", ["prompt", "prompt+head"])
def test_prompt_subsets_primal_equals_dual(subset):
    model = tiny_vit()
    add_visual_prompts(model, num_tokens=2)
    x, y = images(12), labels(12)
    results = [fast_ntk_scrub(model, (x[:3], y[:3]), (x[3:], y[3:]), subset=subset, form=form, cache=False)
               for form in ("primal", "dual")]
    names = results[0].info["subset_params"]
    before = {n: p.detach() for n, p in model.named_parameters()}
    moved = [torch.cat([(dict(r.model.named_parameters())[n] - before[n]).reshape(-1) for n in names])
             for r in results]
    assert moved[0].norm() > 0 and results[0].info["num_params"] == sum(before[n].numel() for n in names)
    torch.testing.assert_close(moved[0], moved[1], rtol=1e-5, atol=1e-8)
    untouched = [n for n in before if n not in names]
    assert all(torch.equal(dict(results[0].model.named_parameters())[n], before[n]) for n in untouched)


def test_torchvision_vision_transformer_takes_prompts():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=CLASSES).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts its head at zero
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = model(x)
    add_visual_prompts(model, num_tokens=2, deep=True)
    assert model.visual_prompts.tokens.shape == (2, 2, 16)
    assert not torch.allclose(model(x), plain)
    result = fast_ntk_scrub(model, (x[:1], torch.tensor([1])), (x[1:], torch.tensor([0, 2])), subset="prompt+head",
                            cache=False)
    assert set(result.info["subset_params"]) == {"visual_prompts.tokens", "heads.head.weight", "heads.head.bias"}
    assert result.info["delta_norm"] > 0


@pytest.mark.parametrize("action, message", [
    (lambda m: select_subset(m, "prompt"), "subset 'prompt' matches no parameter: ViTForImageClassification holds no "
                                           "visual prompts; add them with diffunlearn.add_visual_prompts"),
    (lambda m: [add_visual_prompts(m), add_visual_prompts(m)], "already holds visual prompts"),
    (lambda m: add_visual_prompts(m, num_tokens=0), "num_tokens must be a positive integer, got 0"),
    (lambda m: add_visual_prompts(nn.Sequential(nn.Flatten(), nn.Linear(64, 4))),
     "cannot find the transformer layers of Sequential"),
    (lambda m: load_visual_prompts(m, "/no/such/folder"), "no visual_prompts.safetensors in '/no/such/folder'"),
])
def test_prompt_errors_are_one_line(action, message):
    with pytest.raises(UserError) as info:
        action(tiny_vit())
    assert message in str(info.value) and "\n" not in str(info.value)
