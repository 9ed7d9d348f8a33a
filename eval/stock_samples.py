"""Sample a saved text-to-image folder with the stock diffusers pipeline (no diffunlearn code in the sampling) and
judge the samples with the embedded digits classifier: what a user who only has diffusers gets from our output.

    python eval/stock_samples.py out/acceptance/sd3/seven_to_one_seed0 --family sd3 \
        --prompts "a handwritten digit seven" "a handwritten digit three" [--samples 50] [--guidance 2.0]

Prints, per prompt, the share of samples the classifier reads as the prompt's digit, the most common reading and
the counts per class (the last: the classifier's 'not a digit' output).
"""

import argparse
import sys

import torch

PIPELINES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
             "sd3": "StableDiffusion3Pipeline"}


def load_stock(folder: str, family: str):
    """The folder through stock `from_pretrained` (SD3 without T5, as diffusers documents)."""
    import diffusers

    cls = getattr(diffusers, PIPELINES[family])
    extra = {"sd": {"safety_checker": None, "requires_safety_checker": False},
             "sd3": {"text_encoder_3": None, "tokenizer_3": None}}.get(family, {})
    return cls.from_pretrained(folder, use_safetensors=True, **extra)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--family", required=True, help=f"one of {', '.join(PIPELINES)}")
    parser.add_argument("--prompts", nargs="+", required=True)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.family not in PIPELINES:
        print(f"stock_samples: error: family {args.family!r} is not one of {', '.join(PIPELINES)}", file=sys.stderr)
        sys.exit(2)
    from diffunlearn.config import EvalConfig
    from diffunlearn.evaluation.judge_loading import load_judge

    judge = load_judge(EvalConfig(judge="digits", classifier="embedded:digits/classifier"))
    names = judge.labels + ["not a digit"]  # `predict` gives -1 for the classifier's reject output: counted last
    pipe = load_stock(args.folder, args.family)
    pipe.set_progress_bar_config(disable=True)
    print(f"{type(pipe).__name__}.from_pretrained({args.folder!r}): {args.samples} samples per prompt, "
          f"{args.steps} steps, guidance {args.guidance}, seed {args.seed}")
    for prompt in args.prompts:
        generator = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            images = pipe([prompt] * args.samples, num_inference_steps=args.steps, guidance_scale=args.guidance,
                          generator=generator, output_type="pt").images
        preds = judge.predict(images.float())
        asked = next((i for i, name in enumerate(judge.labels) if prompt.endswith(f" {name}")), None)
        counts = torch.bincount(torch.where(preds < 0, len(judge.labels), preds), minlength=len(names))
        share = "n/a" if asked is None else f"{(preds == asked).float().mean().item():.3f}"
        print(f"{prompt!r}: read as its digit {share}; most common {names[int(counts.argmax())]} "
              f"({int(counts.max())}/{args.samples}); counts {counts.tolist()}")


if __name__ == "__main__":
    main()
