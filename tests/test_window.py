"""Multi-layer editing against a plain copy of kmeng01/memit's `execute_memit` layer loop, on tiny_stats
random models; and a window of one layer equal to today's single-layer edit."""

import pytest
import torch
from conftest import covariance_standin

from editscale import editing
from editscale.editing.batches import EditConfig
from editscale.editing.keys import compute_keys
from editscale.editing.values import compute_values
from editscale.editing.window import edit_window
from editscale.settings import EditSettings, ValueSettings

TEMPLATES = ["{}", "The man said that. {}"]
FACTS = [{"case_id": 10 + i, "prompt": p, "subject": s, "target_new": t} for i, (p, s, t) in enumerate([
    ("The mother tongue of {} is", "Danielle Darrieux", "English"),
    ("{} is located in", "Angola", "Antarctica"),
    ("{} is owned by", "Toyota", "Volkswagen"),
])]
FAST = ValueSettings(steps=4)
# λ small against the keys' scale, so a lower layer's edit visibly changes the keys and outputs above it.
EDIT = EditSettings(mom2_update_weight=1e-2)
# Below the last block: HF's last hidden state is after the final norm, the others are block outputs.
WINDOW = [0, 1]


@pytest.fixture
def tiny_stats(tiny):
    """The tiny model with a C for each layer of the window."""
    model, tok, layout = tiny
    return model, tok, layout, {layer: covariance_standin(model, tok, layout, layer) for layer in WINDOW}


def _plain_memit(model, tok, layout, facts, layers, stats, lam):
    """execute_memit's loop, written out: zs once at the last layer; per layer ascending, keys on the
    model edited so far, cur_zs from a plain full forward (output_hidden_states), targets / layers
    left, upd = resid adj_kᵀ with adj_k = (λC + KKᵀ)⁻¹K, applied before the next layer."""
    last = layers[-1]
    zs = compute_values(model, tok, layout, last, facts, TEMPLATES, FAST, batch_size=8).v_star.double().T
    weights = {layer: layout.weight(model, layer).detach().clone() for layer in layers}
    deltas = {}
    for i, layer in enumerate(layers):
        K = compute_keys(model, tok, layout, layer, facts, TEMPLATES).double().T  # (d_in, n)
        cur = []
        for fact in facts:
            text = fact["prompt"].replace("{}", fact["subject"])
            ids = tok(text, return_tensors="pt")
            subject_ids = tok(fact["prompt"].split("{}")[0] + fact["subject"])["input_ids"]
            hidden = model(**ids, output_hidden_states=True).hidden_states[last + 1][0]  # block `last`'s output
            cur.append(hidden[len(subject_ids) - 1].double())
        resid = (zs - torch.stack(cur, 1)) / (len(layers) - i)
        adj_k = torch.linalg.solve(lam * stats[layer].double() + K @ K.T, K)
        upd = resid @ adj_k.T  # (d_out, d_in)
        deltas[layer] = upd
        with torch.no_grad():
            layout.weight(model, layer).add_(upd.to(torch.float32))
    with torch.no_grad():
        for layer, weight in weights.items():
            layout.weight(model, layer).copy_(weight)
    return deltas


def test_window_equals_memits_layer_loop(tiny_stats):
    model, tok, layout, stats = tiny_stats
    cfg = EditConfig("memit", WINDOW[-1], edit=EDIT, values=FAST)
    before = {layer: layout.weight(model, layer).clone() for layer in WINDOW}
    solvers = {layer: editing.prepare(cfg, stats[layer]) for layer in WINDOW}
    got = edit_window(model, tok, layout, cfg, WINDOW, FACTS, TEMPLATES, solvers)
    for layer in WINDOW:  # nothing is left applied, to the bit
        assert torch.equal(layout.weight(model, layer), before[layer])
    want = _plain_memit(model, tok, layout, FACTS, WINDOW, stats, EDIT.mom2_update_weight)
    assert list(got) == WINDOW
    for layer in WINDOW:
        delta = got[layer].delta.double()
        torch.testing.assert_close(delta, want[layer], rtol=1e-4, atol=1e-4 * float(want[layer].abs().max()))
    # The loop matters: the top layer's ΔW solved on the unedited model's keys and whole residual,
    # as if the layer below had not been edited, is another one.
    K = compute_keys(model, tok, layout, 1, FACTS, TEMPLATES).double().T
    R = compute_values(model, tok, layout, 1, FACTS, TEMPLATES, FAST, batch_size=8).residual.double().T
    naive = R @ torch.linalg.solve(EDIT.mom2_update_weight * stats[1].double() + K @ K.T, K).T
    assert (naive - want[1]).norm() > 1e-2 * want[1].norm()


@pytest.mark.parametrize("algorithm", ["memit", "emmet", "alphaedit", "rome"])
def test_a_window_of_one_layer_is_todays_edit(tiny_stats, algorithm):
    """The single-layer edit as it was before windows: keys and values at the layer, one solve on
    the values' residual. A window of one layer gives exactly it, and so does edit_batch."""
    model, tok, layout, stats = tiny_stats
    facts = FACTS[:1] if algorithm == "rome" else FACTS
    cfg = EditConfig(algorithm, 1, edit=EDIT, values=FAST)
    solver = editing.prepare(cfg, stats[1])
    K = compute_keys(model, tok, layout, 1, facts, TEMPLATES)
    V = compute_values(model, tok, layout, 1, facts, TEMPLATES, FAST, batch_size=cfg.value_batch_size)
    today = solver.solve(K.T, V.residual.T, labels=[f["case_id"] for f in facts])
    for one in (edit_window(model, tok, layout, cfg, [1], facts, TEMPLATES, {1: solver})[1],
                editing.edit_batch(model, tok, layout, cfg, facts, TEMPLATES, solver)):
        assert torch.equal(one.A, today.A) and torch.equal(one.B, today.B) and torch.equal(one.keys, K.T)


def test_every_window_layer_needs_its_own_prepared_solver(tiny_stats):
    model, tok, layout, stats = tiny_stats
    cfg = EditConfig("memit", 1, edit=EDIT, values=FAST)
    before = layout.weight(model, 0).clone()
    with pytest.raises(KeyError, match="no prepared solver for layer 1"):
        edit_window(model, tok, layout, cfg, [0, 1], FACTS, TEMPLATES, {0: editing.prepare(cfg, stats[0])})
    assert torch.equal(layout.weight(model, 0), before)  # the lower layer's edit was undone


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_a_window_sequential_run_resumes_bit_identically(tiny_stats, tmp_path, algorithm):
    """Sequential batches over a window: each layer's factors (and kept keys) per batch, a snapshot
    of every window layer, and a killed run that resumes onto the uninterrupted run's weights."""
    from editscale.editing import sequential

    model, tok, layout, stats = tiny_stats
    cfg = EditConfig(algorithm, WINDOW[-1], edit=EditSettings(mom2_update_weight=1e-2, alphaedit_l2=1e-2),
                     values=FAST)
    solvers = {layer: editing.prepare(cfg, stats[layer]) for layer in WINDOW}
    w0 = {layer: layout.weight(model, layer).clone() for layer in WINDOW}

    def go(folder, after_batch=None):
        edits = sequential.SequentialRun(model, tok, layout, cfg, FACTS, TEMPLATES, solvers, 1, tmp_path / folder,
                                         snapshot_every=2, layers=WINDOW)
        for b, batch_facts in edits:
            if after_batch is not None:
                after_batch(b, batch_facts)
        return edits.state

    def reset():
        for layer in WINDOW:
            layout.weight(model, layer).copy_(w0[layer])

    full = go("full")
    after = {layer: layout.weight(model, layer).clone() for layer in WINDOW}
    for layer in WINDOW:
        torch.testing.assert_close(after[layer], w0[layer] + full.totals[layer], rtol=1e-5, atol=1e-6)
        assert full.totals[layer].norm() > 0
    assert {"L0.delta_relative", "L1.delta_relative", "delta_relative"} <= set(full.diagnostics[-1])
    reset()

    def interrupt(b, _facts):
        if b == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        go("resumed", after_batch=interrupt)
    reset()
    resumed = go("resumed")
    for layer in WINDOW:
        assert torch.equal(layout.weight(model, layer), after[layer])
        assert torch.equal(resumed.totals[layer], full.totals[layer])
    assert resumed.unedited == full.unedited and resumed.diagnostics == full.diagnostics
    if algorithm == "alphaedit":
        assert all(resumed.memories[layer].size == len(FACTS) for layer in WINDOW)
        assert all(torch.equal(resumed.memories[l].gram, full.memories[l].gram) for l in WINDOW)
    reset()
