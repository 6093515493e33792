"""Token positions that editing and scoring depend on.

Targets are located by tokenising prompt + continuation and diffing against the
prompt alone, never by tokenising the continuation by itself: tokenizers that add a
BOS token (Llama-3) or merge across the boundary would otherwise misalign them.
The subject's last token is found from character offsets.
"""

from __future__ import annotations

from dataclasses import dataclass


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
