"""Fluency and drift: generation entropy of continuations, perplexity on held-out text."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

import torch

from editscale.models.hooks import cache_argument
from editscale.models.tokens import pad_batch
from editscale.settings import Evaluation

_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Mean of weight·Hₙ over word n-grams, in bits (ROME's generation entropy: (2/3·H₂ + 4/3·H₃)/2)."""
    words = _WORD.findall(text.lower())
    terms = []
    for n, weight in zip(ns, weights):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        h = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        terms.append(weight * h)
    return sum(terms) / len(terms)


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 50, top_k: int | None = None,
             seed: int = 0, batch_size: int = 16) -> list[str]:
    """Continuations of `prompts`: greedy when `top_k` is None, else seeded top-k sampling."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    cache_name = cache_argument(model)
    texts = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids = [tokenizer(p)["input_ids"] for p in chunk]
        width = max(map(len, ids))
        # Left padding keeps every prompt's last token in the final column.
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids], device=device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        out, past, step_ids = [], None, input_ids
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.no_grad():
            for _ in range(max_new_tokens):
                result = model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                               use_cache=True, **{cache_name: past})
                past, logits = result[cache_name], result.logits[:, -1].float().cpu()
                if top_k is None:
                    nxt = logits.argmax(-1)
                else:
                    top = torch.topk(logits, top_k)
                    pick = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator).squeeze(1)
                    nxt = top.indices.gather(1, pick[:, None]).squeeze(1)
                out.append(nxt)
                step_ids = nxt[:, None].to(device)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                positions = positions[:, -1:] + 1
        new = torch.stack(out, 1)
        texts += [tokenizer.decode(row, skip_special_tokens=True) for row in new]
    return texts


def perplexity(model, tokenizer, texts: Iterable[str], *, max_length: int = 256, max_tokens: int = 20_000,
               batch_size: int = 8) -> float:
    """exp(mean NLL) over windows of up to `max_length` tokens, until `max_tokens` are scored."""
    device = next(model.parameters()).device
    windows, total = [], 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        for i in range(0, len(ids) - 1, max_length):
            window = ids[i : i + max_length]
            if len(window) < 2 or total >= max_tokens:
                continue
            windows.append(window)
            total += len(window) - 1
        if total >= max_tokens:
            break
    if not windows:
        raise ValueError("no text to measure perplexity on")
    nll_sum, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            inputs = pad_batch(windows[start : start + batch_size], tokenizer.pad_token_id, device)
            logits = model(**inputs, use_cache=False).logits[:, :-1].float()
            targets, mask = inputs["input_ids"][:, 1:], inputs["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            nll_sum += float(nll[mask].double().sum())
            count += int(mask.sum())
    return math.exp(nll_sum / count)


def generation_entropy(model, tokenizer, records, *, n_cases: int | None = None,
                       max_new_tokens: int = Evaluation.fluency_tokens,
                       top_k: int | None = None, seed: int = 0, batch_size: int = 16):
    """Per-case generation entropy over each full-format record's `generation_prompts`.

    Each prompt's continuation (prompt text included, as ROME scores it) gets its own
    entropy; a case's value is their mean. EasyEdit records have no generation prompts
    and are skipped.
    """
    import pandas as pd

    cases = records[records.generation_prompts.map(len) > 0]
    if n_cases is not None:
        cases = cases.head(n_cases)
    prompts = [(case, p) for case, ps in zip(cases.case_id, cases.generation_prompts) for p in ps]
    texts = generate(model, tokenizer, [p for _, p in prompts], max_new_tokens=max_new_tokens, top_k=top_k,
                     seed=seed, batch_size=batch_size)
    frame = pd.DataFrame({"case_id": [c for c, _ in prompts],
                          "entropy": [ngram_entropy(p + t) for (_, p), t in zip(prompts, texts)]})
    return frame.groupby("case_id", as_index=False)["entropy"].mean()


def drift_perplexity(model, tokenizer, source=None, *, max_tokens: int = Evaluation.drift_tokens,
                     max_length: int = 256) -> float:
    """Perplexity on held-out text: by default WikiText-2 test, which the statistics never read."""
    from editscale import paths
    from editscale.data import corpus

    if source is None:
        shared = paths.shared_data()
        source = (shared / "corpus" / "wikitext-2-raw-test.txt" if shared is not None
                  else {"hf": "Salesforce/wikitext", "name": "wikitext-2-raw-v1", "split": "test", "field": "text"})
    return perplexity(model, tokenizer, corpus.iter_texts(source), max_length=max_length, max_tokens=max_tokens)
