"""Token positions that editing and scoring depend on, and padded batches of token ids.

Targets are located by tokenising prompt + continuation and diffing against the
prompt alone, never by tokenising the continuation by itself: tokenizers that add a
BOS token (Llama-3) or merge across the boundary would otherwise misalign them.
The subject's last token is found from character offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Span:
    ids: list[int]  # tokens of prompt + continuation, special tokens included
    start: int  # first continuation token
    end: int  # one past the last continuation token

    @property
    def target_ids(self) -> list[int]:
        return self.ids[self.start : self.end]


def continuation_span(tokenizer, prompt: str, continuation: str) -> Span:
    """Where `continuation` (e.g. " Paris") sits in the tokens of `prompt + continuation`."""
    if not continuation:
        raise ValueError(f"empty continuation after prompt {prompt!r}")
    full = tokenizer(prompt + continuation)["input_ids"]
    alone = tokenizer(prompt)["input_ids"]
    start = 0
    while start < min(len(full), len(alone)) and full[start] == alone[start]:
        start += 1
    end = len(full)
    # A tokenizer that appends EOS to every text would put it inside the span.
    eos = getattr(tokenizer, "eos_token_id", None)
    if end > start and full[-1] == eos and alone and alone[-1] == eos:
        end -= 1
    if end <= start:
        raise ValueError(f"continuation {continuation!r} adds no tokens after prompt {prompt!r}")
    return Span(full, start, end)


def fill(template: str, subject: str) -> tuple[str, int]:
    """`template` with its `{}` replaced by `subject`, and the character index where the subject ends."""
    at = template.find("{}")
    if at < 0:
        raise ValueError(f"prompt template {template!r} has no '{{}}' for the subject {subject!r}")
    return template[:at] + subject + template[at + 2 :], at + len(subject)


def subject_last_token(tokenizer, template: str, subject: str) -> tuple[list[int], int]:
    """Tokens of the filled prompt and the index of the subject's last token.

    The subject is the one at `{}`, even if the same words appear elsewhere in the prompt.
    """
    text, subject_end = fill(template, subject)
    encoded = tokenizer(text, return_offsets_mapping=True)
    index = None
    for i, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and start < subject_end:
            index = i
    if index is None:
        raise ValueError(f"no token of subject {subject!r} found in {text!r}")
    return list(encoded["input_ids"]), index


def pad_batch(sequences: list[list[int]], pad_id: int, device) -> dict:
    """Right-padded input_ids and attention_mask for a list of token id lists."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def pad_aligned(sequences: list[list[int]], positions: list[int], pad_id: int, device) -> tuple[dict, int]:
    """Rows padded on the left so that each row's `positions` entry lands in one shared column,
    and on the right to a common width; with position_ids that skip the padding. Returns the
    inputs and that column."""
    column = max(positions)
    width = max(column - pos + len(seq) for seq, pos in zip(sequences, positions))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (seq, pos) in enumerate(zip(sequences, positions)):
        start = column - pos
        ids[row, start : start + len(seq)] = torch.tensor(seq)
        mask[row, start : start + len(seq)] = 1
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}
    return {k: v.to(device) for k, v in inputs.items()}, column


def length_batches(lengths, max_tokens: int, batch_size: int | None = None,
                   longest_first: bool = False) -> list[list[int]]:
    """Row indices grouped greedily by length, shortest first (or longest first), a new group whenever
    one more row would pad past `max_tokens` (rows × the group's widest) or pass `batch_size` rows; a
    row wider than `max_tokens` goes alone. Scoring uses it shortest first; C's pass longest first,
    as the reference's `length_collation`. Ties keep their order."""
    groups: list[list[int]] = []
    widest = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=longest_first):
        room = batch_size is None or len(groups[-1]) < batch_size if groups else False
        if room and (len(groups[-1]) + 1) * max(widest, lengths[i]) <= max_tokens:
            groups[-1].append(i)
            widest = max(widest, lengths[i])
        else:
            groups.append([i])
            widest = lengths[i]
    return groups


def length_buckets(widths: list[int], overhead: int) -> list[list[int]]:
    """Rows grouped by width so that padding plus a fixed cost per group is least.

    Each group is padded to its widest row and costs `overhead` positions beyond that (the
    dispatch cost of one more pass through the model, in positions' worth). Exact by dynamic
    programming over the rows sorted by width: cost[j] = min over i of cost[i] + (j − i)·w_j + overhead,
    w sorted ascending. Returns lists of row indices, narrowest group first; every row is in
    exactly one. A huge `overhead` gives one group (every row padded to the widest).
    """
    order = sorted(range(len(widths)), key=lambda r: widths[r])
    w = [widths[r] for r in order]
    best, cut = [0.0] + [float("inf")] * len(w), [0] * (len(w) + 1)
    for j in range(1, len(w) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * w[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], len(w)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]
