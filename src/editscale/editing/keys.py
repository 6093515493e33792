"""Context templates and keys (docs/design.md §2).

A key k is the input of the edited projection W at the subject's last token:
k = ½·(key from the bare prompt) + ½·(mean key over the prefixed prompts).
"""

from __future__ import annotations

import unicodedata
from typing import Sequence

import torch

from editscale.models.hooks import cache_argument, forward_until, module_inputs
from editscale.models.tokens import pad_batch, subject_last_token
from editscale.settings import Templates

TEMPLATE_STARTS = ("The", "Therefore", "Because", "I", "You")
TEMPLATE_RECIPE = (
    "ROME/MEMIT get_context_templates: '{}' first, then one prefix per start word, all starts sampled "
    "in one batch (generate_fast); each row grows to n_tokens tokens in all, start word and BOS included; "
    "next token by softmax, top-k, renormalise, torch.multinomial on a CPU generator seeded once; "
    "decoded without special tokens, NFKD, blank lines to spaces, stripped; braces to spaces; '. {}' appended"
)


def context_templates(model, tokenizer, *, starts: Sequence[str] = TEMPLATE_STARTS,
                      n_tokens: int = Templates.n_tokens, top_k: int = Templates.top_k,
                      seed: int = Templates.seed) -> list[str]:
    """"{}" plus one sampled prefix per start word, each followed by ". {}" (`TEMPLATE_RECIPE`).

    The reference's recipe (its `max_out_len=10` is `n_tokens`), seeded: on a CPU the
    strings equal the reference's after `torch.manual_seed(seed)`. One deliberate difference:
    special tokens are not decoded into the text (the reference leaves Llama-3's
    "<|begin_of_text|>" inside each template, so re-tokenising gives two BOS tokens).
    """
    rows = sample_prefixes(model, tokenizer, starts, n_tokens=n_tokens, top_k=top_k, seed=seed)
    texts = [unicodedata.normalize("NFKD", tokenizer.decode(row, skip_special_tokens=True)).replace("\n\n", " ").strip()
             for row in rows]
    # Braces in generated text would be read as placeholders later.
    return ["{}"] + [text.replace("{", " ").replace("}", " ") + ". {}" for text in texts]


def sample_prefixes(model, tokenizer, starts: Sequence[str], *, n_tokens: int, top_k: int, seed: int) -> list[list[int]]:
    """Token ids of each start word grown to `n_tokens` tokens in all, every start in one batch.

    As the reference's generate_fast: all rows advance one position per step together, from the
    shortest start on; a row whose start word still has tokens at that position keeps them, and
    its sampled token is discarded. Every step draws one token for every row, in row order.
    """
    device = next(model.parameters()).device
    prompts = [tokenizer(start)["input_ids"] for start in starts]
    if max(map(len, prompts)) > n_tokens:
        raise ValueError(f"templates.n_tokens={n_tokens} is shorter than a start word ({max(map(len, prompts))} "
                         f"tokens, BOS included); raise it")
    ids = torch.full((len(prompts), n_tokens), tokenizer.pad_token_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = torch.tensor(prompt)
    lengths = torch.tensor([len(p) for p in prompts])
    generator = torch.Generator().manual_seed(seed)
    cache_name = cache_argument(model)
    past, done = None, 0
    with torch.no_grad():
        for position in range(int(lengths.min()), n_tokens):
            # Every position before `position` holds a real token in every row, so no mask is needed.
            out = model(input_ids=ids[:, done:position].to(device), use_cache=True, **{cache_name: past})
            past, done = out[cache_name], position
            # (rows, vocab): the next token's distribution
            probs = torch.softmax(out.logits[:, -1].float().cpu(), dim=-1)
            top = torch.topk(probs, top_k, dim=-1)  # (rows, top_k) values and indices
            pick = torch.multinomial(top.values / top.values.sum(1, keepdim=True), 1, generator=generator)  # (rows, 1)
            sampled = top.indices.gather(1, pick).squeeze(1)  # (rows,) token ids
            grow = lengths <= position  # rows whose start word has ended
            ids[grow, position] = sampled[grow]
    return ids.tolist()


def in_context(template: str, prompt: str) -> str:
    """A record prompt ("{} is located in") placed in a context template ("The man said. {}")."""
    return template.replace("{}", prompt, 1)


def template_weights(templates: Sequence[str]) -> torch.Tensor:
    """Weights that average the bare template and the prefixed ones as two equal groups."""
    bare = torch.tensor([t == "{}" for t in templates], dtype=torch.float64)  # (templates,)
    groups = int(bare.any()) + int((~bare.bool()).any())
    weights = torch.where(bare.bool(), 1 / bare.sum().clamp(min=1), 1 / (len(templates) - bare.sum()).clamp(min=1))
    return weights / groups  # (templates,), summing to 1


def compute_keys(model, tokenizer, layout, layer: int, facts, templates: Sequence[str],
                 *, batch_size: int = 16) -> torch.Tensor:
    """Keys (n, d_in), float32, for `facts` (mappings with `prompt` and `subject`)."""
    module = layout.edited_module(model, layer)
    device = next(model.parameters()).device
    weights = template_weights(templates).to(device)
    keys = []
    for start in range(0, len(facts), batch_size):
        chunk = facts[start : start + batch_size]
        sequences, positions = [], []
        for fact in chunk:
            for template in templates:
                ids, index = subject_last_token(tokenizer, in_context(template, fact["prompt"]), fact["subject"])
                sequences.append(ids)
                positions.append(index)
        inputs = pad_batch(sequences, tokenizer.pad_token_id, device)
        with module_inputs({"k": module}) as seen:
            forward_until(model, module, **inputs)
        rows = torch.arange(len(sequences), device=device)
        # seen["k"] (facts·templates, seq, d_in) -> the subject's last token of each prompt: (facts·templates, d_in)
        per_prompt = seen["k"][rows, torch.tensor(positions, device=device)].double()
        per_prompt = per_prompt.view(len(chunk), len(templates), -1)  # (facts, templates, d_in)
        keys.append(torch.einsum("t,ftd->fd", weights, per_prompt).float())  # (facts, d_in): weighted over templates
    return torch.cat(keys)  # (n, d_in)


def save_templates(templates: Sequence[str], path, **provenance) -> None:
    """Write context templates as YAML (with how they were made), atomically."""
    import yaml

    from editscale.artifacts import write_text

    write_text(yaml.safe_dump({**provenance, "templates": list(templates)}, sort_keys=False, allow_unicode=True), path)


def load_templates(path) -> list[str]:
    from editscale.artifacts import read_yaml

    templates = read_yaml(path, {"templates": list})["templates"]
    if not templates or templates[0] != "{}" or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates):
        raise ValueError(f"{path}: the first context template must be the bare prompt '{{}}', and each must hold one "
                         f"'{{}}'; rebuild it: snakemake --cores all --forcerun {path}")
    return templates
