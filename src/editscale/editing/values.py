"""Target values v* (docs/design.md §2), optimised for many facts at once.

For each fact, δ is added to the residual stream after block L at the subject's last
token of every prompt, and minimised:

    loss = mean NLL(target_new | templated prompts)
         + kl_factor · KL(current ‖ initial) at the subject in "{subject} is a"
         + weight_decay · ‖δ‖ / ‖h‖²

The KL term is the reference's `kl_div(init_logp, cur_logp, log_target=True)`, which is
Σ p_cur·(log p_cur − log p_init): KL(current ‖ initial), see `kl_current_initial` and
docs/fidelity.md. A fact stops early once its loss is below the threshold or, with
`early_stop: most_probable` (ENCORE's MPES), at the `most_probable_hold`-th evaluation that finds
every target token the top prediction on every prefixed prompt. A batch of facts shares one
forward/backward per step, but each fact has its own δ, Adam state, early stop and
clamp, and the loss is a sum of per-fact terms: the result equals optimising the facts
one at a time. The blocks up to L run once per batch, and so do the positions before each
subject's last token (a KV cache: δ cannot reach them). Each step replays only the blocks
above L on the positions from the subject on, and computes logits only where scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from editscale.editing.keys import in_context
from editscale.models.hooks import UpperStack, block_output
from editscale.models.tokens import (
    continuation_span,
    fill,
    length_buckets,
    pad_aligned,
    pad_batch,
    subject_last_token,
)
from editscale.settings import ValueSettings


@dataclass
class Values:
    v_star: torch.Tensor  # (n, d) wanted output at the subject's last token: h + δ
    residual: torch.Tensor  # (n, d) r = v* − h, the change W's output must make
    loss: torch.Tensor  # (n,) loss at the last evaluation
    steps: torch.Tensor  # (n,) Adam updates taken
    converged: torch.Tensor  # (n,) stopped early: loss below the threshold (or, with MPES, the target on top)

    @staticmethod
    def cat(parts: list["Values"]) -> "Values":
        return Values(*(torch.cat([getattr(p, f) for p in parts]) for f in Values.__dataclass_fields__))


def compute_values(model, tokenizer, layout, layer: int, facts, templates, config: ValueSettings = ValueSettings(),
                   *, batch_size: int, path: str = "fast", progress: bool = False) -> Values:
    """v* and r for `facts` (mappings with prompt, subject, target_new), `batch_size` facts per forward.

    `path` is how each step runs: "fast" (the default), or for tests and benchmarks the two it
    must equal: "aligned" (the fast path with all rows in one padded group) and "plain" (a full
    forward per step)."""
    if path not in RUNNERS:
        raise ValueError(f"unknown values path {path!r}; one of {sorted(RUNNERS)}")
    chunks = range(0, len(facts), batch_size)
    parts = [
        _optimise(model, tokenizer, layout, layer, facts[i : i + batch_size], templates, config, path)
        for i in tqdm(chunks, desc=f"values L{layer}", unit="batch", disable=not progress)
    ]
    return Values.cat(parts)


class _Plan:
    """Token bookkeeping for a batch of facts: which rows, positions and tokens are scored."""

    def __init__(self, tokenizer, facts, templates, kl_prompt):
        sequences, seq_fact, seq_lookup, seq_is_kl = [], [], [], []
        tok_seq, tok_pos, tok_id, tok_checked = [], [], [], []
        # Most-probable early stopping checks the prefixed prompts only (the reference's log_probs[1:]),
        # or the bare one when there are no others.
        checked = [i > 0 or len(templates) == 1 for i in range(len(templates))]
        for f, fact in enumerate(facts):
            target = " " + fact["target_new"]
            for t_index, template in enumerate([*templates, None]):
                if template is None:  # the KL prompt: only the distribution after the subject is used
                    ids, lookup = subject_last_token(tokenizer, kl_prompt, fact["subject"])
                else:
                    in_ctx = in_context(template, fact["prompt"])
                    prompt_ids, lookup = subject_last_token(tokenizer, in_ctx, fact["subject"])
                    span = continuation_span(tokenizer, fill(in_ctx, fact["subject"])[0], target)
                    if span.start <= lookup or span.ids[: lookup + 1] != prompt_ids[: lookup + 1]:
                        raise ValueError(f"target {target!r} merges with the subject in {in_ctx!r}")
                    ids = span.ids[: span.end - 1]
                    for p in range(span.start, span.end):
                        tok_seq.append(len(sequences))
                        tok_pos.append(p - 1)
                        tok_id.append(span.ids[p])
                        tok_checked.append(checked[t_index])
                sequences.append(ids)
                seq_fact.append(f)
                seq_lookup.append(lookup)
                seq_is_kl.append(template is None)
        self.sequences = sequences
        t = lambda x, dt=torch.long: torch.tensor(x, dtype=dt)  # noqa: E731
        self.seq_fact, self.seq_lookup, self.seq_is_kl = t(seq_fact), t(seq_lookup), t(seq_is_kl, torch.bool)
        self.tok_seq, self.tok_pos, self.tok_id = t(tok_seq), t(tok_pos), t(tok_id)
        self.tok_checked = t(tok_checked, torch.bool)
        self.n_facts = len(facts)
        self.per_fact = len(templates) + 1  # rewrite prompts (the first is bare) and the KL prompt

    def subset(self, keep: torch.Tensor) -> tuple["_Plan", torch.Tensor]:
        """The plan for the facts where `keep` is True, and the sequence rows it keeps."""
        seq_keep = keep[self.seq_fact]
        new_seq = torch.cumsum(seq_keep, 0) - 1
        new_fact = torch.cumsum(keep, 0) - 1
        tok_keep = seq_keep[self.tok_seq]
        sub = object.__new__(_Plan)
        sub.sequences = None
        sub.seq_fact, sub.seq_lookup = new_fact[self.seq_fact[seq_keep]], self.seq_lookup[seq_keep]
        sub.seq_is_kl = self.seq_is_kl[seq_keep]
        sub.tok_seq, sub.tok_pos, sub.tok_id = new_seq[self.tok_seq[tok_keep]], self.tok_pos[tok_keep], self.tok_id[tok_keep]
        sub.tok_checked = self.tok_checked[tok_keep]
        sub.n_facts, sub.per_fact = int(keep.sum()), self.per_fact
        return sub, torch.nonzero(seq_keep).squeeze(1)

    def scored(self):
        """(rows, positions) of the target tokens, then of each fact's KL position."""
        kl_rows = torch.nonzero(self.seq_is_kl).squeeze(1)
        rows = torch.cat([self.tok_seq, kl_rows])
        return rows, torch.cat([self.tok_pos, self.seq_lookup[kl_rows]])

    def losses(self, logits: torch.Tensor, init_kl: torch.Tensor | None):
        """Per-fact NLL and KL from the logits at `scored()` positions; also the KL log-probs."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        n_tok = len(self.tok_seq)
        tok_nll = -logp[:n_tok].gather(1, self.tok_id.to(logp.device)[:, None]).squeeze(1)
        seq_count = torch.bincount(self.tok_seq, minlength=len(self.seq_fact)).to(logp.device)
        seq_nll = torch.zeros(len(self.seq_fact), device=logp.device).index_add(0, self.tok_seq.to(logp.device), tok_nll)
        seq_nll = seq_nll / seq_count.clamp(min=1)
        rewrite = ~self.seq_is_kl
        fact_of = self.seq_fact[rewrite].to(logp.device)
        fact_nll = torch.zeros(self.n_facts, device=logp.device).index_add(0, fact_of, seq_nll[rewrite.to(logp.device)])
        fact_nll = fact_nll / (self.per_fact - 1)
        kl_logp = logp[n_tok:]
        init = kl_logp.detach() if init_kl is None else init_kl
        return fact_nll, kl_current_initial(kl_logp, init), kl_logp.detach()

    def most_probable(self, logits: torch.Tensor) -> torch.Tensor:
        """Per fact: is every target token the top-1 prediction (teacher-forced) on every checked prompt?"""
        n_tok = len(self.tok_seq)
        right = logits[:n_tok].argmax(-1).cpu() == self.tok_id
        wrong = (~right & self.tok_checked).float()
        return torch.zeros(self.n_facts).index_add(0, self.seq_fact[self.tok_seq], wrong) == 0


def kl_current_initial(current: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """KL(current ‖ initial) = Σ p_cur·(log p_cur − log p_init) per row, from log-probabilities.

    This is what the reference's `torch.nn.functional.kl_div(initial, current, log_target=True)`
    computes (kl_div(input, target) = Σ exp(target)·(target − input)); gradients flow through
    `current` only, `initial` being the detached distribution of the first step.
    """
    return (current.exp() * (current - initial)).sum(-1)


def _optimise(model, tokenizer, layout, layer, facts, templates, config: ValueSettings, path: str) -> Values:
    assert templates[0] == "{}", "the first context template must be the bare prompt"
    device = next(model.parameters()).device
    plan = _Plan(tokenizer, facts, templates, config.kl_prompt)
    runner = RUNNERS[path](model, layout, layer, plan, tokenizer.pad_token_id, device)
    h = runner.at_lookup(plan, torch.arange(len(facts)) * plan.per_fact).float()
    h_norm = h.norm(dim=1)

    n, d = h.shape
    delta = torch.zeros(n, d, device=device)
    adam_m, adam_v = torch.zeros_like(delta), torch.zeros_like(delta)
    final_loss = torch.full((n,), float("nan"), device=device)
    steps = torch.zeros(n, dtype=torch.long)
    converged = torch.zeros(n, dtype=torch.bool)
    top1_count = torch.zeros(n, dtype=torch.long)  # evaluations at which the target was the top prediction
    active = torch.arange(n)
    init_kl = None
    for it in range(config.steps):
        d_active = delta[active.to(device)].clone().requires_grad_(True)
        rows, cols = plan.scored()
        logits = runner.logits(plan, d_active, rows, cols)
        nll, kl, kl_logp = plan.losses(logits, init_kl)
        if init_kl is None:
            init_kl = kl_logp
        decay = config.weight_decay * d_active.norm(dim=1) / h_norm[active.to(device)] ** 2
        loss = nll + config.kl_factor * kl + decay
        final_loss[active.to(device)] = loss.detach()
        done = (loss.detach() < config.loss_threshold).cpu()
        if config.early_stop == "most_probable":  # MPES: the loss rule stands, this one may stop sooner
            top1_count[active] += plan.most_probable(logits.detach()).long()
            done |= top1_count[active] >= config.most_probable_hold
        converged[active[done]] = True
        if it == config.steps - 1 or done.all():
            break
        (grad,) = torch.autograd.grad(loss.sum(), d_active)
        keep = ~done
        idx = active[keep].to(device)
        _adam_step(delta, adam_m, adam_v, grad[keep.to(device)], idx, it + 1, config.lr)
        limit = config.clamp_factor * h_norm[idx]
        norms = delta[idx].norm(dim=1)
        delta[idx] *= torch.where(norms > limit, limit / norms, torch.ones_like(norms))[:, None]
        steps[active[keep]] += 1
        if done.any():
            plan, seq_rows = plan.subset(keep)
            runner.select(seq_rows.to(device))
            init_kl = init_kl[keep.to(device)]
            active = active[keep]
    # On a single edited layer the output at the bare prompt is h, so r = v* − h = δ.
    return Values(v_star=(h + delta).cpu(), residual=delta.cpu(), loss=final_loss.cpu(), steps=steps,
                  converged=converged)


def _adam_step(param, m, v, grad, idx, t, lr, betas=(0.9, 0.999), eps=1e-8):
    """torch.optim.Adam's update, on rows `idx` only (every active row has taken t steps)."""
    b1, b2 = betas
    m[idx] = b1 * m[idx] + (1 - b1) * grad
    v[idx] = b2 * v[idx] + (1 - b2) * grad * grad
    denom = (v[idx].sqrt() / (1 - b2**t) ** 0.5) + eps
    param[idx] -= (lr / (1 - b1**t)) * m[idx] / denom


# A pass through the upper blocks costs about as much as replaying this many more positions
# (per-op dispatch on a CPU); `length_buckets` trades padding against passes with it.
BUCKET_OVERHEAD = 48


class _Fast:
    """Blocks up to L and positions before the subject once; each step replays the blocks
    above L from the subject on, and the head at scored positions. Rows are aligned at the
    subject's last token, so it sits in column 0 of what is replayed.

    Rows are replayed in groups of similar width (`length_buckets`), each with its own
    UpperStack: padded positions cost as much as real ones, and one padded block would be
    about 40% padding on CounterFact (the KL prompt is short, continuations vary). Each row's
    numbers do not depend on which rows share its pass. `overhead=None` keeps one group."""

    def __init__(self, model, layout, layer, plan, pad_id, device, overhead: int | None = BUCKET_OVERHEAD):
        self.norm, self.head = layout.head(model)
        lookup = plan.seq_lookup.tolist()
        widths = [len(seq) - pos for seq, pos in zip(plan.sequences, lookup)]
        groups = [list(range(len(widths)))] if overhead is None else length_buckets(widths, overhead)
        self.stacks = []  # (rows of the plan in this group, the group's UpperStack)
        for rows in groups:
            inputs, column = pad_aligned([plan.sequences[r] for r in rows], [lookup[r] for r in rows], pad_id, device)
            stack = UpperStack(model, layout.block_list(model), layer, prefix=column, **inputs)
            self.stacks.append((torch.tensor(rows), stack))
        self._locate()

    def _locate(self):
        """For every plan row: its group and its index inside the group."""
        n = sum(len(rows) for rows, _ in self.stacks)
        self.group_of, self.index_in = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
        for g, (rows, _) in enumerate(self.stacks):
            self.group_of[rows], self.index_in[rows] = g, torch.arange(len(rows))

    def at_lookup(self, plan, rows):
        return torch.stack([self.stacks[g][1].hidden[i, 0] for g, i in zip(self.group_of[rows].tolist(),
                                                                           self.index_in[rows].tolist())])

    def logits(self, plan, delta, rows, cols):
        cols = cols - plan.seq_lookup[rows]  # column in the replayed positions
        picked, order = [], []
        for g, (group_rows, stack) in enumerate(self.stacks):
            h = stack.hidden  # (rows in group, replayed positions, d)
            first = torch.zeros(len(group_rows), dtype=torch.long, device=h.device)
            at = (torch.arange(len(group_rows), device=h.device), first)
            h = stack.run(h.index_put(at, delta[plan.seq_fact[group_rows].to(h.device)].to(h.dtype), accumulate=True))
            mine = torch.nonzero(self.group_of[rows] == g).squeeze(1)
            picked.append(h[self.index_in[rows[mine]].to(h.device), cols[mine].to(h.device)])
            order.append(mine)
        h = torch.cat(picked)[torch.argsort(torch.cat(order)).to(picked[0].device)]  # (scored, d), in `rows` order
        return self.head(self.norm(h))

    def select(self, seq_rows):
        """Keep plan rows `seq_rows` (renumbered 0.. in that order); groups left empty are dropped."""
        renumber = torch.full((len(self.group_of),), -1, dtype=torch.long)
        renumber[seq_rows.cpu()] = torch.arange(len(seq_rows))
        stacks = []
        for rows, stack in self.stacks:
            keep = torch.nonzero(renumber[rows] >= 0).squeeze(1)
            if len(keep):
                stacks.append((renumber[rows[keep]], stack.select(keep.to(stack.hidden.device))))
        self.stacks = stacks
        self._locate()


class _Plain:
    """The plain path: a full forward per step with δ added by a hook, logits everywhere."""

    def __init__(self, model, layout, layer, plan, pad_id, device):
        self.model, self.block = model, layout.block(model, layer)
        self.inputs = pad_batch(plan.sequences, pad_id, device)
        self.hidden = self._forward(None)[1]

    def at_lookup(self, plan, rows):
        return self.hidden[rows.to(self.hidden.device), plan.seq_lookup[rows].to(self.hidden.device)]

    def _forward(self, add):
        seen = {}

        def hook(_module, _args, output):
            h = block_output(output)
            seen["h"] = h.detach()
            if add is not None:
                h = add(h)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        handle = self.block.register_forward_hook(hook)
        try:
            logits = self.model(**self.inputs, use_cache=False).logits
        finally:
            handle.remove()
        return logits, seen["h"]

    def logits(self, plan, delta, rows, cols):
        seq_rows = torch.arange(len(plan.seq_fact), device=delta.device)
        lookup, fact = plan.seq_lookup.to(delta.device), plan.seq_fact.to(delta.device)
        add = lambda h: h.index_put((seq_rows, lookup), delta[fact].to(h.dtype), accumulate=True)  # noqa: E731
        logits, _ = self._forward(add)
        return logits[rows.to(logits.device), cols.to(logits.device)]

    def select(self, seq_rows):
        self.inputs = {k: v[seq_rows] for k, v in self.inputs.items()}


RUNNERS = {
    "fast": _Fast,
    "aligned": lambda *args: _Fast(*args, overhead=None),
    "plain": _Plain,
}
