"""Keys and values on tiny random models: batching and the fast path change nothing."""

import json
from pathlib import Path

import pytest
import torch

from editscale.editing import keys, values
from editscale.models.tokens import fill, length_buckets
from editscale.settings import ValueSettings

FACTS = [
    {"case_id": 1, "prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux", "target_new": "English"},
    {"case_id": 2, "prompt": "{} is located in", "subject": "Angola", "target_new": "Antarctica"},
    {"case_id": 3, "prompt": "{} is owned by", "subject": "Toyota", "target_new": "Volkswagen Group"},
    {"case_id": 4, "prompt": "{}, which is in", "subject": "The Eiffel Tower", "target_new": "Rome"},
]
TEMPLATES = ["{}", "The man said that. {}", "Therefore, because of the rain. {}"]
# Short runs keep the tests fast; a threshold no fact reaches on one step, one all reach on another.
CONFIG = ValueSettings(steps=6, loss_threshold=0.05)


def plain_prefixes(model, tok, starts, n_tokens, top_k, seed):
    """The reference's sampling, written plainly: the global RNG seeded once, every row advanced one
    position per step from the shortest start on, a full forward (no cache) each step, one
    top-k draw per row per step, kept only by rows whose start word has ended."""
    torch.manual_seed(seed)
    rows = [tok(start)["input_ids"] for start in starts]
    for position in range(min(map(len, rows)), n_tokens):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row[:position] for row in rows])).logits[:, -1].float()
        top = torch.topk(torch.softmax(logits, -1), top_k)
        pick = torch.multinomial(top.values / top.values.sum(1, keepdim=True), 1)
        for i, row in enumerate(rows):
            if len(row) == position:
                row.append(int(top.indices[i, pick[i, 0]]))
    return rows


def test_context_templates_follow_the_reference_recipe(tiny):
    model, tok, _ = tiny
    first = keys.context_templates(model, tok, seed=3, n_tokens=6)
    assert first == keys.context_templates(model, tok, seed=3, n_tokens=6)
    assert first != keys.context_templates(model, tok, seed=4, n_tokens=6)
    assert first[0] == "{}" and len(first) == 1 + len(keys.TEMPLATE_STARTS)
    assert all(t.endswith(". {}") and t.count("{}") == 1 for t in first[1:])
    # Starts of different token lengths, so rows wait for each other as in the reference.
    starts = ["The", "Therefore", "Because of the", "I", "You"]
    rows = keys.sample_prefixes(model, tok, starts, n_tokens=12, top_k=5, seed=3)
    assert [len(row) for row in rows] == [12] * len(starts)  # BOS and the start word included
    assert all(row[: len(tok(s)["input_ids"])] == tok(s)["input_ids"] for row, s in zip(rows, starts))
    assert rows == plain_prefixes(model, tok, starts, 12, 5, 3)
    texts = [t.removesuffix(". {}") for t in keys.context_templates(model, tok, starts=starts, n_tokens=12, seed=3)[1:]]
    assert all(text.startswith(start) for text, start in zip(texts, starts))
    with pytest.raises(ValueError, match="n_tokens"):
        keys.context_templates(model, tok, starts=["Because of the"], n_tokens=2)


def test_kl_term_is_the_references_kl_div(tiny):
    """The KL term is torch.nn.functional.kl_div(initial, current, log_target=True) per fact, i.e.
    KL(current ‖ initial), value and gradient; never the other direction."""
    _, tok, _ = tiny
    plan = values._Plan(tok, FACTS, TEMPLATES, CONFIG.kl_prompt)
    rows, _ = plan.scored()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(rows), len(tok), generator=generator).requires_grad_(True)
    init = torch.log_softmax(torch.randn(len(FACTS), len(tok), generator=generator), -1)
    _, kl, current = plan.losses(logits, init)
    n_kl = len(FACTS)
    reference = torch.stack([
        torch.nn.functional.kl_div(init[i : i + 1], torch.log_softmax(logits[-n_kl:][i : i + 1], -1), log_target=True,
                                   reduction="batchmean") for i in range(n_kl)])
    torch.testing.assert_close(kl, reference)
    (ours,) = torch.autograd.grad(kl.sum(), logits, retain_graph=True)
    (theirs,) = torch.autograd.grad(reference.sum(), logits)
    torch.testing.assert_close(ours, theirs)
    reverse = torch.nn.functional.kl_div(current, init, log_target=True, reduction="none").sum(-1)
    assert not torch.allclose(kl, reverse, rtol=1e-2)


def test_templates_round_trip_as_an_artifact(tiny, tmp_path):
    model, tok, _ = tiny
    templates = keys.context_templates(model, tok, seed=0, n_tokens=8)
    keys.save_templates(templates, tmp_path / "t.yaml", seed=0)
    assert keys.load_templates(tmp_path / "t.yaml") == templates
    keys.save_templates(templates[1:], tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="bare prompt"):
        keys.load_templates(tmp_path / "bad.yaml")


def test_keys_batched_equal_one_at_a_time_and_follow_the_mix(tiny):
    model, tok, layout = tiny
    batched = keys.compute_keys(model, tok, layout, 1, FACTS, TEMPLATES, batch_size=4)
    single = torch.cat([keys.compute_keys(model, tok, layout, 1, [f], TEMPLATES) for f in FACTS])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    # k = ½ bare + ½ mean(prefixed), checked against per-template keys computed one by one.
    per_template = [keys.compute_keys(model, tok, layout, 1, FACTS[:1], [t]) for t in TEMPLATES]
    expected = 0.5 * per_template[0] + 0.25 * (per_template[1] + per_template[2])
    torch.testing.assert_close(batched[:1], expected, rtol=1e-5, atol=1e-6)


def test_batched_values_equal_one_fact_at_a_time(tiny):
    model, tok, layout = tiny
    batched = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, CONFIG, batch_size=4)
    single = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, CONFIG, batch_size=1)
    scale = single.v_star.norm(dim=1, keepdim=True)
    assert ((batched.v_star - single.v_star).abs() <= 1e-4 * scale).all()
    torch.testing.assert_close(batched.loss, single.loss, rtol=1e-4, atol=1e-5)
    assert torch.equal(batched.steps, single.steps) and torch.equal(batched.converged, single.converged)
    assert batched.residual.abs().sum() > 0  # the optimisation moved


def test_fast_step_equals_plain_full_forward(tiny):
    """One step of the fast path (blocks below L and positions before the subject cached, rows
    aligned at the subject, logits only where scored) gives the plain path's logits and ∂loss/∂δ."""
    model, tok, layout = tiny
    plan = values._Plan(tok, FACTS, TEMPLATES, CONFIG.kl_prompt)
    bare = torch.arange(len(FACTS)) * plan.per_fact
    for layer in (0, 1, 2):
        fast = values._Fast(model, layout, layer, plan, tok.pad_token_id, "cpu")
        plain = values._Plain(model, layout, layer, plan, tok.pad_token_id, "cpu")
        torch.testing.assert_close(fast.at_lookup(plan, bare), plain.at_lookup(plan, bare), rtol=1e-6, atol=1e-6)
        # δ at the scale of h (norm ≈ 0.1 in these models), where the loss still responds to it.
        delta = 0.01 * torch.randn(len(FACTS), model.config.hidden_size, generator=torch.Generator().manual_seed(layer))
        _, _, init_kl = plan.losses(plain.logits(plan, torch.zeros_like(delta)), None)
        outputs = []
        for runner in (fast, plain):
            d = delta.clone().requires_grad_(True)
            logits = runner.logits(plan, d)
            nll, kl, _ = plan.losses(logits, init_kl)
            (grad,) = torch.autograd.grad((nll + kl).sum(), d)
            outputs.append((logits, grad))
        (fast_logits, fast_grad), (plain_logits, plain_grad) = outputs
        torch.testing.assert_close(fast_logits, plain_logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast_grad, plain_grad, rtol=1e-4, atol=1e-7)
        assert plain_grad.abs().max() > 1e-4  # δ reaches the loss (at the last layer, through the KL term)


def test_fast_path_equals_plain_full_forward(tiny):
    """Whole optimisations agree too, grouped by width ("fast") or in one padded group
    ("aligned"). Not at the last layer: there δ at the subject cannot reach the target positions
    at all, the gradient is float noise, and Adam turns noise into steps."""
    model, tok, layout = tiny
    for layer in (0, 1):
        plain = values.compute_values(model, tok, layout, layer, FACTS, TEMPLATES, CONFIG, batch_size=4, path="plain")
        for path in ("fast", "aligned"):
            fast = values.compute_values(model, tok, layout, layer, FACTS, TEMPLATES, CONFIG, batch_size=4, path=path)
            torch.testing.assert_close(fast.loss, plain.loss, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(fast.v_star, plain.v_star, rtol=1e-4, atol=1e-5)
            assert torch.equal(fast.steps, plain.steps) and torch.equal(fast.converged, plain.converged)


def test_width_groups_give_the_one_padded_groups_step(tiny):
    """Rows replayed in several groups give the logits and gradient of one padded group, also
    after facts drop out (`select`), and the plan really is split (every fact's KL row is short)."""
    model, tok, layout = tiny
    plan = values._Plan(tok, FACTS, TEMPLATES, CONFIG.kl_prompt)
    grouped = values._Fast(model, layout, 1, plan, tok.pad_token_id, "cpu", overhead=0)
    one = values._Fast(model, layout, 1, plan, tok.pad_token_id, "cpu", overhead=None)
    assert len(grouped.stacks) > 1 and len(one.stacks) == 1
    delta = 0.01 * torch.randn(len(FACTS), model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for keep in (None, torch.tensor([True, False, True, True])):
        if keep is not None:
            plan, seq_rows = plan.subset(keep)
            grouped.select(seq_rows, plan)
            one.select(seq_rows, plan)
            delta = delta[keep]
        outputs = []
        for runner in (grouped, one):
            d = delta.clone().requires_grad_(True)
            logits = runner.logits(plan, d)
            (grad,) = torch.autograd.grad(logits.square().sum(), d)
            outputs.append((logits, grad))
        torch.testing.assert_close(outputs[0][0], outputs[1][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(outputs[0][1], outputs[1][1], rtol=1e-4, atol=1e-7)
        bare = torch.arange(plan.n_facts) * plan.per_fact
        torch.testing.assert_close(grouped.at_lookup(plan, bare), one.at_lookup(plan, bare))


PINNED = Path(__file__).parent / "data" / "values-00d1c10.json"
# How a GPU meets the host (values.POLICIES["cuda"]), and one that reads the host every step but
# never drops a finished fact: finished facts ride along, masked, in one padded group.
MASKED = [values.StepPolicy(check_every=5, compact_at=0.5, overhead=None),
          values.StepPolicy(check_every=1, compact_at=1.0, overhead=None), values.StepPolicy(check_every=3)]


@pytest.mark.parametrize("case", ["loss", "mixed", "mpes"])
def test_values_equal_those_pinned_before_the_loop_kept_its_state_on_the_device(tiny, case, request):
    """v* of the loop as it was at commit 00d1c10 (host reads every step, finished facts dropped
    at once), pinned in tests/data: the device-resident loop gives them under every policy, the
    CPU's and the GPU's. "mixed" has facts that stop at their first evaluation beside facts that
    run all 8 steps; "loss" and "mpes" run every fact to the end."""
    model, tok, layout = tiny
    pinned = json.loads(PINNED.read_text())[f"{request.node.callspec.params['tiny']}/{case}"]
    config = ValueSettings(steps=8, loss_threshold=pinned["loss_threshold"], early_stop=pinned["early_stop"],
                           most_probable_hold=pinned["most_probable_hold"])
    expected = torch.tensor(pinned["v_star"])
    for policy in (None, *MASKED):
        out = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, config, batch_size=4, policy=policy)
        assert out.steps.tolist() == pinned["steps"] and out.converged.tolist() == pinned["converged"], policy
        error = ((out.v_star - expected).norm(dim=1) / expected.norm(dim=1)).max()
        assert error <= 1e-5, (policy, error)
        torch.testing.assert_close(out.loss, torch.tensor(pinned["loss"]), rtol=1e-5, atol=1e-6)
    assert case != "mixed" or 0 < sum(pinned["converged"]) < len(FACTS)


def test_masked_facts_keep_the_state_they_stopped_with(tiny):
    """Under a policy that never drops finished facts, a fact that stops keeps its δ, loss and
    step count while the others go on, exactly as when it is optimised alone."""
    model, tok, layout = tiny
    probe = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, CONFIG, batch_size=4)
    config = ValueSettings(steps=6, loss_threshold=float(probe.loss.median()))
    masked = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, config, batch_size=4, policy=MASKED[1])
    single = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, config, batch_size=1, policy=MASKED[1])
    assert masked.converged.any() and not masked.converged.all()
    assert torch.equal(masked.steps, single.steps) and torch.equal(masked.converged, single.converged)
    torch.testing.assert_close(masked.v_star, single.v_star, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(masked.loss, single.loss, rtol=1e-4, atol=1e-5)


def test_each_device_type_has_a_policy():
    assert values.policy_for("cpu") == values.StepPolicy()
    assert values.policy_for("cuda:0").overhead is None and values.policy_for("cuda").check_every > 1


def test_length_buckets_cover_every_row_once_and_trade_padding_for_passes():
    widths = [3, 9, 9, 4, 3, 8, 3, 9]
    for overhead in (0, 4, 16, 10**9):
        groups = length_buckets(widths, overhead)
        assert sorted(r for g in groups for r in g) == list(range(len(widths)))
        cost = sum(len(g) * max(widths[r] for r in g) + overhead for g in groups)
        one_group = len(widths) * max(widths) + overhead
        assert cost <= one_group
    assert len(length_buckets(widths, 10**9)) == 1
    assert len(length_buckets(widths, 0)) == len(set(widths))  # no cost per pass: no padding at all
    # At 4 a pass: {3,3,3,4} + {8,9,9,9} costs 20 + 40 = 60; splitting off the 4 (61) or the 8 (63) costs more.
    groups = length_buckets(widths, 4)
    assert {tuple(sorted(widths[r] for r in g)) for g in groups} == {(3, 3, 3, 4), (8, 9, 9, 9)}


def test_early_stopping_freezes_converged_facts(tiny):
    """A fact that converges drops out; the others go on exactly as they would alone."""
    model, tok, layout = tiny
    probe = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, CONFIG, batch_size=4)
    # A threshold between the facts' final losses makes some stop early and some not.
    threshold = float(probe.loss.median())
    config = ValueSettings(steps=6, loss_threshold=threshold)
    batched = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, config, batch_size=4)
    single = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, config, batch_size=1)
    assert batched.converged.any() and not batched.converged.all()
    assert (batched.steps[batched.converged] < config.steps - 1).any()
    torch.testing.assert_close(batched.v_star, single.v_star, rtol=1e-4, atol=1e-5)
    assert torch.equal(batched.steps, single.steps)


def test_clamp_bounds_delta(tiny):
    model, tok, layout = tiny
    config = ValueSettings(steps=6, loss_threshold=0.0, clamp_factor=0.01, lr=5.0)
    out = values.compute_values(model, tok, layout, 1, FACTS, TEMPLATES, config, batch_size=4)
    h = out.v_star - out.residual
    assert (out.residual.norm(dim=1) <= 0.01 * h.norm(dim=1) * (1 + 1e-5)).all()


def test_values_are_computed_at_the_layer_output(tiny):
    """v* − r is the block-L output at the subject's last token of the bare prompt."""
    model, tok, layout = tiny
    out = values.compute_values(model, tok, layout, 1, FACTS[:1], TEMPLATES, CONFIG, batch_size=1)
    text, _ = fill(FACTS[0]["prompt"], FACTS[0]["subject"])
    from editscale.models.tokens import subject_last_token
    ids, index = subject_last_token(tok, FACTS[0]["prompt"], FACTS[0]["subject"])
    hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(out.v_star[0] - out.residual[0], hidden[0, index], rtol=1e-5, atol=1e-5)


def test_most_probable_checks_every_target_token_on_the_prefixed_prompts_only(tiny):
    """MPES's test, as the reference's log_probs[1:]: all target tokens top-1 on every prefixed prompt;
    the bare prompt (template 0) is not checked."""
    _, tok, _ = tiny
    plan = values._Plan(tok, FACTS[:2], TEMPLATES, CONFIG.kl_prompt)
    n_tok = len(plan.tok_seq)
    rows, _ = plan.scored()
    logits = torch.zeros(len(rows), len(tok))
    logits[torch.arange(n_tok), plan.tok_id] = 1.0  # every target token on top
    assert plan.most_probable(logits).tolist() == [True, True]
    bare = plan.tok_seq == 0  # fact 0's bare prompt is its first sequence
    logits[torch.nonzero(bare).squeeze(1), plan.tok_id[bare]] = -1.0
    assert plan.most_probable(logits).tolist() == [True, True]  # not checked
    prefixed = torch.nonzero((plan.seq_fact[plan.tok_seq] == 1) & plan.tok_checked).squeeze(1)[-1]
    logits[prefixed, plan.tok_id[prefixed]] = -1.0
    assert plan.most_probable(logits).tolist() == [True, False]
