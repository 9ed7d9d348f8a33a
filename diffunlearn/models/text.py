"""Prompts for the Stable Diffusion family: a small CLIP tokenizer built offline, a tiny text encoder config, and
prompt tokenization that refuses what the tokenizer cannot encode.

The embedded text-to-image model has its own vocabulary: byte-pair merges learned (with the `tokenizers` trainer)
on the words of its captions until every caption word is one token, saved in the `vocab.json` + `merges.txt` layout
of CLIP. Its `model_max_length` equals the text encoder's `max_position_embeddings`, so padded prompts always fit.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, List, Sequence

import torch
from transformers import CLIPTextConfig, CLIPTokenizer

from ..errors import UserError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"  # CLIP's specials; EOS doubles as padding and unknown token


def learn_vocabulary(words: Iterable[str]) -> tuple[dict, list]:
    """Byte-pair vocabulary and merges in which each of `words` is a single token (with CLIP's "</w>" suffix).

    Plain BPE learning on the distinct words: repeatedly merge the most frequent adjacent pair (ties: the
    lexicographically smallest) until every word is one symbol. Deterministic, unlike the `tokenizers` trainer,
    whose tie-breaking changes from run to run.

    Args:
        words: lowercase words made of letters (the caption vocabulary).

    Returns:
        (vocab, merges): {token: id} with CLIP's specials first, and the merges ("a", "b") in rank order.
    """
    words = sorted({w.lower() for w in words})
    bad = [w for w in words if not (w.isascii() and w.isalpha())]
    if bad:
        raise UserError(f"caption words must be ASCII letters only, got {bad}")
    split = [list(w[:-1]) + [w[-1] + "</w>"] for w in words]
    tokens = [BOS, EOS] + sorted({s for symbols in split for s in symbols})
    merges = []
    while any(len(symbols) > 1 for symbols in split):
        counts = Counter(pair for symbols in split for pair in zip(symbols, symbols[1:]))
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        tokens.append(best[0] + best[1])
        for symbols in split:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i:i + 2] = [best[0] + best[1]]
                i += 1
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}, merges


def build_tokenizer(words: Iterable[str], model_max_length: int = 16) -> CLIPTokenizer:
    """A `CLIPTokenizer` whose vocabulary holds each of `words` as one token.

    Args:
        words: the caption vocabulary.
        model_max_length: tokens per prompt, bos and eos included (= the text encoder's max_position_embeddings).
    """
    vocab, merges = learn_vocabulary(words)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_text_encoder_config(tokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                             intermediate_size: int = 128) -> dict:
    """Config of a small `CLIPTextModel` matching `tokenizer` (vocabulary, specials, max length)."""
    return dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads,
                max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def tiny_text_encoder(tokenizer, **kwargs):
    """A randomly initialised `CLIPTextModel` from `tiny_text_encoder_config`."""
    from transformers import CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**tiny_text_encoder_config(tokenizer, **kwargs)))


def unknown_words(tokenizer, prompt: str) -> List[str]:
    """The whitespace-separated words of `prompt` that the tokenizer maps (partly) to its unknown token."""
    unk = tokenizer.unk_token_id
    return [w for w in prompt.split() if unk in tokenizer(w, add_special_tokens=False).input_ids]


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids (N, L) of `prompts`, padded to the tokenizer's `model_max_length` L.

    Raises:
        UserError: a prompt with words the tokenizer cannot encode, or longer than L tokens (bos, eos included).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) == 0:
        raise UserError("no prompts given; give at least one prompt")
    limit = tokenizer.model_max_length
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise UserError(f"prompts must be strings, got {prompt!r}")
        unknown = unknown_words(tokenizer, prompt)
        if unknown:
            raise UserError(f"prompt {prompt!r} has words the tokenizer cannot encode: {', '.join(unknown)}")
        length = len(tokenizer(prompt, verbose=False).input_ids)
        if length > limit:
            raise UserError(f"prompt {prompt!r} is {length} tokens long; the tokenizer takes at most {limit} "
                            "(start and end tokens included)")
    return tokenizer(list(prompts), padding="max_length", max_length=limit, truncation=False,
                     return_tensors="pt").input_ids
