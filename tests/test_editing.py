"""Applying edits on tiny random models: layouts, sequential batches, run folders and resumption."""

import logging

import pytest
import torch
from conftest import covariance_standin

from editscale import algorithms, artifacts, editing
from editscale.editing import sequential
from editscale.editing.batches import EditConfig
from editscale.editing.keys import compute_keys
from editscale.editing.values import Values, compute_values
from editscale.settings import EditSettings, ValueSettings

TEMPLATES = ["{}", "The man said that. {}"]
FACTS = [
    {"case_id": 10 + i, "prompt": p, "subject": s, "target_new": t}
    for i, (p, s, t) in enumerate([
        ("The mother tongue of {} is", "Danielle Darrieux", "English"),
        ("{} is located in", "Angola", "Antarctica"),
        ("{} is owned by", "Toyota", "Volkswagen"),
        ("{}, which is in", "The Eiffel Tower", "Rome"),
        ("{} was born in", "Ludwig van Beethoven", "Paris"),
        ("{} plays the", "Jimi Hendrix", "violin"),
    ])
]
FAST = ValueSettings(steps=4)
# λ small against the keys' own scale, so each batch's edit is large enough to change the next one.
SEQ = EditSettings(mom2_update_weight=1e-3, alphaedit_l2=1e-3)


def config(algorithm, edit=SEQ):
    return EditConfig(algorithm=algorithm, layer=1, edit=edit, values=FAST)


def run(tiny_c, cfg, facts, batch_size, run_dir, after_batch=None, **kw):
    """A sequential run to the end, `after_batch(b, facts)` called on each applied batch as the
    workflow evaluates it; its state."""
    model, tok, layout, C = tiny_c
    edits = sequential.SequentialRun(model, tok, layout, cfg, facts, TEMPLATES, editing.prepare(cfg, C), batch_size,
                                     run_dir, **kw)
    for b, batch_facts in edits:
        if after_batch is not None:
            after_batch(b, batch_facts)
    return edits.state


@pytest.fixture
def tiny_c(tiny):
    """The tiny model with a C for layer 1."""
    model, tok, layout = tiny
    return model, tok, layout, covariance_standin(model, tok, layout, 1)


def test_apply_and_revert_restore_the_weights(tiny_c):
    model, _, layout, _ = tiny_c
    before = layout.weight(model, 1).clone()
    delta = torch.randn_like(before)
    editing.apply_delta(model, layout, 1, delta)
    torch.testing.assert_close(layout.weight(model, 1), before + delta)
    editing.revert_delta(model, layout, 1, delta)
    torch.testing.assert_close(layout.weight(model, 1), before)


def test_non_finite_delta_never_reaches_the_model(tiny_c):
    model, _, layout, _ = tiny_c
    before = layout.weight(model, 1).clone()
    delta = torch.zeros_like(before)
    delta[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        editing.apply_delta(model, layout, 1, delta)
    assert torch.equal(layout.weight(model, 1), before)


@pytest.mark.parametrize("algorithm", ["rome", "memit", "emmet", "alphaedit"])
def test_edit_moves_the_key_toward_the_value(tiny_c, algorithm):
    """After applying ΔW, W's output on each key changes by about its residual (exactly for ROME/EMMET λ=0)."""
    model, tok, layout, C = tiny_c
    facts = FACTS[:1] if algorithm == "rome" else FACTS[:3]
    cfg = config(algorithm, EditSettings(emmet_lambda=0.0, mom2_update_weight=1e-6, nullspace_threshold=1e-2,
                                         alphaedit_l2=1e-9))
    edit = editing.edit_batch(model, tok, layout, cfg, facts, TEMPLATES, editing.prepare(cfg, C))
    R = compute_values(model, tok, layout, 1, facts, TEMPLATES, FAST, batch_size=8).residual.T
    change = edit.delta @ edit.keys
    torch.testing.assert_close(change, R, rtol=1e-3, atol=1e-3 * float(R.abs().max()))
    assert edit.diagnostics["n"] == len(facts) and edit.diagnostics["condition"] > 0


def test_rome_refuses_batches(tiny_c):
    model, tok, layout, C = tiny_c
    cfg = config("rome")
    with pytest.raises(ValueError, match="1 fact at a time"):
        editing.edit_batch(model, tok, layout, cfg, FACTS[:2], TEMPLATES, editing.prepare(cfg, C))


def test_duplicate_subject_in_a_batch_is_caught_not_nan(tiny_c):
    model, tok, layout, C = tiny_c
    facts = [FACTS[0], dict(FACTS[0], case_id=99, target_new="German"), FACTS[1]]
    before = layout.weight(model, 1).clone()
    cfg = config("emmet", EditSettings(emmet_lambda=0.0))
    with pytest.raises(algorithms.IllConditionedError) as err:
        editing.edit_batch(model, tok, layout, cfg, facts, TEMPLATES, editing.prepare(cfg, C))
    assert "10" in str(err.value) and "99" in str(err.value)
    assert torch.equal(layout.weight(model, 1), before)


class Interrupt(Exception):
    pass


def interrupt_at(batch):
    def after_batch(b, _facts):
        if b == batch:
            raise Interrupt

    return after_batch


# one of each kind of sequential state (none, earlier keys, a running inverse, a shrinking projector), a
# restraint by the current weight, and an add-on with dense factors
STATES = ["memit", "alphaedit", "memit_seq", "rlsedit", "evoedit", "sphere", "memit_seq+rect"]


def state_of(memory) -> list:
    """The tensors a sequential state holds."""
    return [t for t in (getattr(memory, name, None) for name in ("K", "gram", "matrix")) if t is not None]


@pytest.mark.parametrize("algorithm", STATES)
def test_sequential_resumes_to_the_same_weights(tiny_c, tmp_path, algorithm):
    """Interrupt while batch 1 is being evaluated (a real exception), rerun, and land on the
    uninterrupted run's weights, bit for bit."""
    model, tok, layout, _ = tiny_c
    w0 = layout.weight(model, 1).clone()
    cfg = config(algorithm)
    full = run(tiny_c, cfg, FACTS, 2, tmp_path / "full")
    w_full = layout.weight(model, 1).clone()
    torch.testing.assert_close(w_full, w0 + full.total, rtol=1e-5, atol=1e-6)
    layout.weight(model, 1).copy_(w0)  # a fresh process starts from the unedited weights

    with pytest.raises(Interrupt):
        run(tiny_c, cfg, FACTS, 2, tmp_path / "resumed", after_batch=interrupt_at(1))
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["batch-00000.safetensors"]
    layout.weight(model, 1).copy_(w0)
    seen = []
    resumed = run(tiny_c, cfg, FACTS, 2, tmp_path / "resumed", after_batch=lambda b, _f: seen.append(b))
    assert seen == [1, 2]  # only the batches that were left
    assert torch.equal(layout.weight(model, 1), w_full) and torch.equal(resumed.total, full.total)
    assert [d["batch"] for d in resumed.diagnostics] == [0, 1, 2]
    assert resumed.unedited == full.unedited  # W₀'s health, not that of the weights the resume replayed
    if algorithms.get(algorithm).remembers:
        assert resumed.memory.size == len(FACTS) and state_of(resumed.memory)
        assert all(torch.equal(a, b) for a, b in zip(state_of(resumed.memory), state_of(full.memory), strict=True))


def test_a_kill_between_snapshots_replays_from_the_last_one(tiny_c, tmp_path, caplog):
    """Snapshots every 2 batches, killed during batch 3: the rerun loads the weights after batch 2,
    replays batch 2's factors, and ends bit-identical to an uninterrupted run."""
    model, tok, layout, _ = tiny_c
    w0 = layout.weight(model, 1).clone()
    cfg = config("alphaedit")
    full = run(tiny_c, cfg, FACTS, 1, tmp_path / "full", snapshot_every=2)
    w_full = layout.weight(model, 1).clone()
    layout.weight(model, 1).copy_(w0)
    with pytest.raises(Interrupt):
        run(tiny_c, cfg, FACTS, 1, tmp_path / "killed", snapshot_every=2, after_batch=interrupt_at(3))
    assert (tmp_path / "killed" / "snapshot.safetensors").exists()
    layout.weight(model, 1).copy_(w0)
    with caplog.at_level(logging.INFO, logger="editscale"):
        resumed = run(tiny_c, cfg, FACTS, 1, tmp_path / "killed", snapshot_every=2)
    assert "after batch 3 (snapshot after 2, 1 replayed)" in caplog.text
    assert torch.equal(layout.weight(model, 1), w_full) and torch.equal(resumed.total, full.total)


def test_a_batch_writes_only_what_it_adds(tiny_c, tmp_path):
    """Factors (and, for algorithms that keep them, keys): O((d_in + d_out)·B) bytes, never a full matrix."""
    model, _, layout, _ = tiny_c
    d_out, d_in = layout.weight(model, 1).shape
    for algorithm, tensors in (("memit", {"layer1.A", "layer1.B"}), ("alphaedit", {"layer1.A", "layer1.B", "layer1.keys"})):
        run(tiny_c, config(algorithm), FACTS[:4], 2, tmp_path / algorithm)
        from safetensors import safe_open

        with safe_open(str(tmp_path / algorithm / "batch-00001.safetensors"), framework="pt") as f:
            assert set(f.keys()) == tensors
            assert {tuple(f.get_tensor(k).shape) for k in f.keys()} <= {(d_out, 2), (d_in, 2)}


def test_sequential_batches_see_earlier_edits(tiny_c, tmp_path):
    """Batch 2's values are computed on the model edited by batch 1, unlike independent batches."""
    model, tok, layout, C = tiny_c
    cfg = config("memit")
    seq = run(tiny_c, cfg, FACTS[:4], 2, tmp_path / "s")
    editing.revert_delta(model, layout, 1, seq.total)
    solver = editing.prepare(cfg, C)
    first = editing.edit_batch(model, tok, layout, cfg, FACTS[:2], TEMPLATES, solver)
    second_alone = editing.edit_batch(model, tok, layout, cfg, FACTS[2:4], TEMPLATES, solver)
    assert seq.diagnostics[0]["delta_norm"] == pytest.approx(first.diagnostics["delta_norm"], rel=1e-5)
    assert seq.diagnostics[1]["delta_norm"] != pytest.approx(second_alone.diagnostics["delta_norm"], rel=1e-3)
    assert not torch.allclose(seq.total, first.delta + second_alone.delta, rtol=1e-4, atol=1e-6)


def test_a_run_folder_of_another_run_is_never_resumed(tiny_c, tmp_path, caplog):
    """The run folder is an `artifacts.Parts` folder named by the run's identity: a run of another
    identity beside the same output removes it and starts over, ending where a clean run ends."""
    model, _, layout, _ = tiny_c
    w0 = layout.weight(model, 1).clone()
    out = tmp_path / "r" / "run.parquet"
    old = artifacts.Parts(out, "old").folder
    with pytest.raises(Interrupt):
        run(tiny_c, config("memit"), FACTS[:4], 2, old, after_batch=interrupt_at(1))
    assert list(old.glob("batch-*.safetensors")), "the interrupted run left no batch to resume"
    layout.weight(model, 1).copy_(w0)
    clean = run(tiny_c, config("memit"), FACTS[:4], 2, tmp_path / "clean")
    layout.weight(model, 1).copy_(w0)
    with caplog.at_level(logging.INFO, logger="editscale"):
        other = run(tiny_c, config("memit"), FACTS[:4], 2, artifacts.Parts(out, "new").folder)
    assert not old.exists() and "removing" in caplog.text and "resuming" not in caplog.text
    assert torch.equal(other.total, clean.total)


@pytest.mark.parametrize("algorithm", ["memit", "alphaedit"])
def test_sequential_with_cached_first_batch_matches_computing_it(tiny_c, tmp_path, algorithm, monkeypatch):
    """Batch 0 runs on the unedited model, so keys and values cached there give the same run."""
    model, tok, layout, C = tiny_c
    cfg = config(algorithm)
    computed = run(tiny_c, cfg, FACTS[:4], 2, tmp_path / "a")
    editing.revert_delta(model, layout, 1, computed.total)
    # Cached the way the values rule does it: all four facts in one go, not batch by batch.
    K = compute_keys(model, tok, layout, 1, FACTS[:4], TEMPLATES)
    V = compute_values(model, tok, layout, 1, FACTS[:4], TEMPLATES, FAST, batch_size=4)
    first = (K[:2], Values(*(getattr(V, f)[:2] for f in Values.__dataclass_fields__)))
    optimised = []
    monkeypatch.setattr(editing.window, "compute_values", lambda *a, **k: optimised.append(a[4]) or compute_values(*a, **k))
    reused = run(tiny_c, cfg, FACTS[:4], 2, tmp_path / "b", first_batch=first)
    torch.testing.assert_close(reused.total, computed.total, rtol=1e-4, atol=1e-6)
    assert [d["value_steps"] for d in reused.diagnostics] == [d["value_steps"] for d in computed.diagnostics]
    assert optimised == [FACTS[2:4]]  # only the second batch was optimised


def test_cached_first_batch_of_the_wrong_size_is_refused(tiny_c, tmp_path):
    model, tok, layout, C = tiny_c
    K = compute_keys(model, tok, layout, 1, FACTS[:1], TEMPLATES)
    V = compute_values(model, tok, layout, 1, FACTS[:1], TEMPLATES, FAST, batch_size=1)
    with pytest.raises(ValueError, match="batch of 2"):
        run(tiny_c, config("memit"), FACTS[:4], 2, tmp_path / "c", first_batch=(K, V))


def test_conflicting_edits_in_a_batch_are_refused_or_named(caplog):
    batches = [FACTS[:2], [FACTS[2], dict(FACTS[2], case_id=77, target_new="Fiat"), FACTS[3]]]
    with pytest.raises(ValueError, match=r"'Toyota' \(cases 12, 77: 'Volkswagen' vs 'Fiat'\).*allow_conflicts"):
        editing.check_conflicts(batches)
    with caplog.at_level(logging.WARNING, logger="editscale"):
        editing.check_conflicts(batches, allow=True)
    assert "'Toyota' (cases 12, 77" in caplog.text
    editing.check_conflicts([FACTS[:3], [dict(FACTS[0], case_id=78)]])  # other batches, or the same target: fine


def test_edits_are_cut_into_batches_one_way():
    from editscale.editing import batch_slices

    assert [(c.start, c.stop) for c in batch_slices(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert [(c.start, c.stop) for c in batch_slices(8, 8)] == [(0, 8)] and batch_slices(0, 4) == []


@pytest.mark.parametrize("algorithm", STATES)
def test_a_replay_of_the_stored_factors_gives_the_runs_weights_after_every_batch(tiny_c, tmp_path, algorithm):
    """What the downstream check scores at a sequential point: the weights the run itself had after
    that batch, bit for bit, rebuilt from its stored factors alone; W₀ is back afterwards, also when
    the caller stops early."""
    model, _, layout, _ = tiny_c
    w0 = layout.weight(model, 1).clone()
    during = []
    run(tiny_c, config(algorithm), FACTS[:5], 2, tmp_path / "run",
        after_batch=lambda b, _f: during.append(layout.weight(model, 1).clone()))
    layout.weight(model, 1).copy_(w0)
    stored = sequential.stored_edits(tmp_path / "run")
    replayed = []
    for n_edits in sequential.replay(stored, model, layout):
        replayed.append((n_edits, layout.weight(model, 1).clone()))
    assert [n for n, _ in replayed] == [2, 4, 5]
    assert all(torch.equal(mine, theirs) for (_, mine), theirs in zip(replayed, during))
    assert not torch.equal(during[-1], w0) and torch.equal(layout.weight(model, 1), w0)
    for _ in sequential.replay(stored, model, layout):
        break  # left after the first batch
    assert torch.equal(layout.weight(model, 1), w0)
