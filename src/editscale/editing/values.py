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
                   *, batch_size: int, path: str = "fast", policy: StepPolicy | None = None,
                   progress: bool = False) -> Values:
    """v* and r for `facts` (mappings with prompt, subject, target_new), `batch_size` facts per forward.

    `path` is how each step runs: "fast" (the default), or for tests and benchmarks the two it
    must equal: "aligned" (the fast path with all rows in one padded group) and "plain" (a full
    forward per step). `policy` is how the loop meets the host; by default the device's own
    (`POLICIES`); it changes speed, not v*."""
    if path not in RUNNERS:
        raise ValueError(f"unknown values path {path!r}; one of {sorted(RUNNERS)}")
    chunks = range(0, len(facts), batch_size)
    parts = [
        _optimise(model, tokenizer, layout, layer, facts[i : i + batch_size], templates, config, path, policy)
        for i in tqdm(chunks, desc=f"values L{layer}", unit="batch", disable=not progress)
    ]
    return Values.cat(parts)


class _Plan:
    """Token bookkeeping for a batch of facts: which rows, positions and tokens are scored.

    Built on the host, then moved once to the model's device (`to`): every step reads only
    tensors that are already there, so a step never waits for the host."""

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
        self._derive()

    def _derive(self):
        """Index tensors every step needs, computed once per plan (on the plan's device)."""
        self.kl_rows = torch.nonzero(self.seq_is_kl).squeeze(1)  # (n_facts,) each fact's KL sequence
        self.rewrite_rows = torch.nonzero(~self.seq_is_kl).squeeze(1)  # (n_facts·(per_fact−1),)
        self.tok_fact = self.seq_fact[self.tok_seq]  # (n_tok,) the fact each target token belongs to
        self.seq_count = torch.bincount(self.tok_seq, minlength=len(self.seq_fact)).clamp(min=1)
        # Scored positions: the target tokens (teacher-forced), then each fact's KL position.
        self.rows = torch.cat([self.tok_seq, self.kl_rows])  # (targets + kl,): batch row of each scored position
        self.cols = torch.cat([self.tok_pos, self.seq_lookup[self.kl_rows]])  # (targets + kl,): its position in the row

    def to(self, device) -> "_Plan":
        for name in ("seq_fact", "seq_lookup", "seq_is_kl", "tok_seq", "tok_pos", "tok_id", "tok_checked"):
            setattr(self, name, getattr(self, name).to(device))
        self._derive()
        return self

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
        sub._derive()
        return sub, torch.nonzero(seq_keep).squeeze(1)

    def scored(self):
        """(rows, positions) of the target tokens, then of each fact's KL position."""
        return self.rows, self.cols

    def losses(self, logits: torch.Tensor, init_kl: torch.Tensor | None):
        """Per-fact NLL and KL from the logits at `scored()` positions; also the KL log-probs."""
        logp = torch.log_softmax(logits.float(), dim=-1)  # (scored, vocab)
        n_tok = len(self.tok_seq)
        tok_nll = -logp[:n_tok].gather(1, self.tok_id[:, None]).squeeze(1)  # (n_tok,)
        seq_nll = logp.new_zeros(len(self.seq_fact)).index_add(0, self.tok_seq, tok_nll) / self.seq_count
        fact_nll = logp.new_zeros(self.n_facts).index_add(0, self.seq_fact[self.rewrite_rows],
                                                          seq_nll[self.rewrite_rows])
        fact_nll = fact_nll / (self.per_fact - 1)  # (n_facts,) mean over the rewrite prompts
        kl_logp = logp[n_tok:]  # (n_facts, vocab)
        init = kl_logp.detach() if init_kl is None else init_kl
        return fact_nll, kl_current_initial(kl_logp, init), kl_logp.detach()

    def most_probable(self, logits: torch.Tensor) -> torch.Tensor:
        """Per fact: is every target token the top-1 prediction (teacher-forced) on every checked prompt?"""
        n_tok = len(self.tok_seq)
        wrong = ((logits[:n_tok].argmax(-1) != self.tok_id) & self.tok_checked).float()
        return logits.new_zeros(self.n_facts, dtype=torch.float32).index_add(0, self.tok_fact, wrong) == 0


def kl_current_initial(current: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """KL(current ‖ initial) = Σ p_cur·(log p_cur − log p_init) per row, from log-probabilities.

    This is what the reference's `torch.nn.functional.kl_div(initial, current, log_target=True)`
    computes (kl_div(input, target) = Σ exp(target)·(target − input)); gradients flow through
    `current` only, `initial` being the detached distribution of the first step.
    """
    return (current.exp() * (current - initial)).sum(-1)  # KL(current ‖ initial) per row: (rows, vocab) -> (rows,)


@dataclass(frozen=True)
class StepPolicy:
    """How the loop meets the host; v* is the same under any policy (tests/test_values.py).

    check_every: steps between reads of the finished facts on the host (on a GPU each read waits
        for the queue to drain);
    compact_at: finished share of the replayed facts above which they are dropped from the replay
        (until then they ride along, masked: no update, no change of state);
    overhead: the replay's fixed cost per pass, in positions (`length_buckets`); None: one group."""
    check_every: int = 1
    compact_at: float = 0.0
    overhead: int | None = 48


# A CPU's cost is arithmetic, and one more pass costs about as much as 48 more positions
# (per-op dispatch): drop finished facts at once, group rows by width. A GPU at these sizes
# is bound by launches and host reads, not arithmetic (an H200 took 0.5 s a step at batch 64
# and at 256 alike): one group, the host reads every 5 steps, finished facts stay in until
# half are done. `benchmarks/values.py --policies` measures both on any device.
POLICIES = {"cpu": StepPolicy(), "cuda": StepPolicy(check_every=5, compact_at=0.5, overhead=None)}


def policy_for(device) -> StepPolicy:
    return POLICIES.get(torch.device(device).type, POLICIES["cuda"])


def _optimise(model, tokenizer, layout, layer, facts, templates, config: ValueSettings, path: str,
              policy: StepPolicy | None) -> Values:
    assert templates[0] == "{}", "the first context template must be the bare prompt"
    device = next(model.parameters()).device
    policy = policy or policy_for(device)
    plan = _Plan(tokenizer, facts, templates, config.kl_prompt)
    runner = RUNNERS[path](model, layout, layer, plan, tokenizer.pad_token_id, device, policy.overhead)
    plan = plan.to(device)
    h = runner.at_lookup(plan, torch.arange(len(facts)) * plan.per_fact).float()  # (n, d)
    h_norm = h.norm(dim=1)

    n, d = h.shape
    delta = torch.zeros(n, d, device=device)
    adam_m, adam_v = torch.zeros_like(delta), torch.zeros_like(delta)
    # Per-fact state, all on the device; a fact's state changes only while it is live.
    final_loss = torch.full((n,), float("nan"), device=device)
    steps = torch.zeros(n, dtype=torch.long, device=device)
    converged = torch.zeros(n, dtype=torch.bool, device=device)
    top1_count = torch.zeros(n, dtype=torch.long, device=device)  # evaluations with the target on top
    live = torch.ones(n, dtype=torch.bool, device=device)  # still optimising
    active = torch.arange(n, device=device)  # facts in the replay: the live ones and, masked, some finished
    init_kl = None
    for it in range(config.steps):
        d_active = delta[active].requires_grad_(True)  # (m, d), a copy
        logits = runner.logits(plan, d_active)  # (scored, vocab)
        nll, kl, kl_logp = plan.losses(logits, init_kl)
        if init_kl is None:
            init_kl = kl_logp
        decay = config.weight_decay * d_active.norm(dim=1) / h_norm[active] ** 2
        loss = nll + config.kl_factor * kl + decay  # (m,)
        running = live[active]
        final_loss[active] = torch.where(running, loss.detach(), final_loss[active])
        done = running & (loss.detach() < config.loss_threshold)
        if config.early_stop == "most_probable":  # MPES: the loss rule stands, this one may stop sooner
            top1_count[active] += (running & plan.most_probable(logits.detach())).long()
            done |= running & (top1_count[active] >= config.most_probable_hold)
        converged[active] |= done
        running = running & ~done
        live[active] = running
        if it == config.steps - 1:
            break
        check = (it + 1) % policy.check_every == 0
        if check and not running.any():  # the host reads here, and only here
            break
        (grad,) = torch.autograd.grad(loss.sum(), d_active)
        _adam_step(delta, adam_m, adam_v, grad, active, running, it + 1, config.lr,
                   config.clamp_factor * h_norm[active])
        steps[active] += running.long()
        if check:
            finished = len(active) - int(running.sum())
            if finished > policy.compact_at * len(active):
                plan, seq_rows = plan.subset(running)
                runner.select(seq_rows, plan)
                init_kl = init_kl[running]
                active = active[running]
    # On a single edited layer the output at the bare prompt is h, so r = v* − h = δ.
    return Values(v_star=(h + delta).cpu(), residual=delta.cpu(), loss=final_loss.cpu(), steps=steps.cpu(),
                  converged=converged.cpu())


def _adam_step(param, m, v, grad, idx, running, t, lr, limit, betas=(0.9, 0.999), eps=1e-8):
    """torch.optim.Adam's update on rows `idx` where `running` (every running row has taken t
    steps), then each updated row clamped to norm `limit`; other rows are left as they are."""
    b1, b2 = betas
    r = running[:, None]  # (facts, 1): broadcast over d_out
    m_new = torch.where(r, b1 * m[idx] + (1 - b1) * grad, m[idx])  # (facts, d_out): Adam's first moment
    v_new = torch.where(r, b2 * v[idx] + (1 - b2) * grad * grad, v[idx])  # (facts, d_out): second moment
    denom = (v_new.sqrt() / (1 - b2**t) ** 0.5) + eps
    p = param[idx]
    p_new = p - (lr / (1 - b1**t)) * m_new / denom
    norms = p_new.norm(dim=1)
    p_new = p_new * torch.where(norms > limit, limit / norms, torch.ones_like(norms))[:, None]  # clamp each δ's norm
    m[idx], v[idx], param[idx] = m_new, v_new, torch.where(r, p_new, p)


class _Fast:
    """Blocks up to L and positions before the subject once; each step replays the blocks
    above L from the subject on, and the head at scored positions. Rows are aligned at the
    subject's last token, so it sits in column 0 of what is replayed.

    On a CPU rows are replayed in groups of similar width (`length_buckets`), each with its own
    UpperStack: padded positions cost as much as real ones, and one padded block would be
    about 40% padding on CounterFact (the KL prompt is short, continuations vary). Each row's
    numbers do not depend on which rows share its pass. `overhead=None` keeps one group."""

    def __init__(self, model, layout, layer, plan, pad_id, device, overhead: int | None = StepPolicy.overhead):
        self.norm, self.head = layout.head(model)
        lookup = plan.seq_lookup.tolist()
        widths = [len(seq) - pos for seq, pos in zip(plan.sequences, lookup)]
        groups = [list(range(len(widths)))] if overhead is None else length_buckets(widths, overhead)
        self.stacks = []  # (rows of the plan in this group, the group's UpperStack)
        for rows in groups:
            inputs, column = pad_aligned([plan.sequences[r] for r in rows], [lookup[r] for r in rows], pad_id, device)
            stack = UpperStack(model, layout.block_list(model), layer, prefix=column, **inputs)
            self.stacks.append((torch.tensor(rows), stack))
        self._index(plan)

    def _index(self, plan):
        """Device index tensors for the plan's scored positions: per group, the facts of its rows
        and where its scored positions sit; and the order that puts them back in `scored()` order."""
        n = sum(len(rows) for rows, _ in self.stacks)
        self.group_of, self.index_in = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
        for g, (rows, _) in enumerate(self.stacks):
            self.group_of[rows], self.index_in[rows] = g, torch.arange(len(rows))
        rows, cols = plan.rows.cpu(), (plan.cols - plan.seq_lookup[plan.rows]).cpu()  # column in the replay
        seq_fact = plan.seq_fact.cpu()
        self.steps, order = [], []
        for g, (group_rows, stack) in enumerate(self.stacks):
            dev = stack.hidden.device
            mine = torch.nonzero(self.group_of[rows] == g).squeeze(1)
            at = (torch.arange(len(group_rows), device=dev), torch.zeros(len(group_rows), dtype=torch.long, device=dev))
            pick = (self.index_in[rows[mine]].to(dev), cols[mine].to(dev))
            self.steps.append((stack, seq_fact[group_rows].to(dev), at, pick))
            order.append(mine)
        self.order = torch.argsort(torch.cat(order)).to(self.stacks[0][1].hidden.device)

    def at_lookup(self, plan, rows):
        rows = rows.cpu()
        return torch.stack([self.stacks[g][1].hidden[i, 0] for g, i in zip(self.group_of[rows].tolist(),
                                                                           self.index_in[rows].tolist())])

    def logits(self, plan, delta):
        picked = []
        for stack, facts, at, pick in self.steps:
            h = stack.hidden  # (rows in group, replayed positions, d)
            h = stack.run(h.index_put(at, delta[facts].to(h.dtype), accumulate=True))
            picked.append(h[pick])  # (scored in group, d)
        h = torch.cat(picked)[self.order]  # (scored, d), in `plan.scored()` order
        return self.head(self.norm(h))

    def select(self, seq_rows, plan):
        """Keep plan rows `seq_rows` (renumbered 0.. in that order; `plan` is the plan they make);
        groups left empty are dropped."""
        renumber = torch.full((len(self.group_of),), -1, dtype=torch.long)
        renumber[seq_rows.cpu()] = torch.arange(len(seq_rows))
        stacks = []
        for rows, stack in self.stacks:
            keep = torch.nonzero(renumber[rows] >= 0).squeeze(1)
            if len(keep):
                stacks.append((renumber[rows[keep]], stack.select(keep.to(stack.hidden.device))))
        self.stacks = stacks
        self._index(plan)


class _Plain:
    """The plain path: a full forward per step with δ added by a hook, logits everywhere."""

    def __init__(self, model, layout, layer, plan, pad_id, device, overhead=None):
        self.model, self.block = model, layout.block(model, layer)
        self.inputs = pad_batch(plan.sequences, pad_id, device)
        self.hidden = self._forward(None)[1]

    def at_lookup(self, plan, rows):
        rows = rows.to(self.hidden.device)
        return self.hidden[rows, plan.seq_lookup.to(self.hidden.device)[rows]]

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

    def logits(self, plan, delta):
        seq_rows = torch.arange(len(plan.seq_fact), device=delta.device)
        add = lambda h: h.index_put((seq_rows, plan.seq_lookup), delta[plan.seq_fact].to(h.dtype), accumulate=True)  # noqa: E731
        logits, _ = self._forward(add)
        return logits[plan.rows, plan.cols]

    def select(self, seq_rows, plan):
        self.inputs = {k: v[seq_rows] for k, v in self.inputs.items()}


RUNNERS = {
    "fast": _Fast,
    "aligned": lambda *args: _Fast(*args[:-1], overhead=None),
    "plain": _Plain,
}
