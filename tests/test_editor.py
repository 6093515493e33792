"""The library's front door (editscale.Editor, Edit, export) and its command line, on a tiny model."""

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SHARED, covariance_standin

import editscale
from editscale import editing, models
from editscale.editing import keys, values
from editscale.settings import EditSettings, ValueSettings

ROOT = Path(__file__).resolve().parents[1]
FACTS = [
    {"prompt": "{} is a citizen of", "subject": "Danielle Darrieux", "target_new": "Japan"},
    {"prompt": "{} is located in", "subject": "Angola", "target_new": "Antarctica"},
]
EDIT = EditSettings(mom2_update_weight=1e-3)
QUICK = ValueSettings(steps=4)


TINY = ("llama",)  # the Editor on one architecture; test_editing covers both


def make_editor(model, tok, layout, algorithm="memit"):
    C = covariance_standin(model, tok, layout, 1)
    return editscale.Editor(model, tok, layout, algorithm=algorithm, layers=[1], stats=C, edit=EDIT,
                            value_settings=QUICK, progress=False)


def test_the_readme_snippet_runs(tiny_llama_dir, tmp_path, monkeypatch):
    """The README's library section, exactly, on the tiny model (its name and layer swapped in)."""
    if SHARED is None:
        pytest.skip("C comes from the offline corpus")
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"test_the_readme_snippet_runs -->\n```python\n(.*?)```", text, re.S).group(1)
    assert len(snippet.splitlines()) <= 16
    snippet = snippet.replace('"smollm2-135m"', repr(str(tiny_llama_dir))).replace("layers=[3]", "layers=[1]")
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    assert (tmp_path / "darrieux.safetensors").exists() and (tmp_path / "edited" / "editscale.json").exists()
    # C went into the workflow's own cache path, with the workflow's provenance.
    (stats,) = (tmp_path / "results").rglob("layer1.safetensors")
    from editscale.editing.stats import stats_id
    from editscale.settings import Stats

    assert stats.parent.name == stats_id(Stats()) and stats.parent.parent.name == "stats"


def test_an_edit_equals_the_workflows_edit_and_applies_reverts_saves_and_reloads(tiny, tmp_path):
    model, tok, layout = tiny
    w0 = layout.weight(model, 1).clone()
    editor = make_editor(model, tok, layout)
    edit = editor.edit(FACTS)
    assert torch.equal(layout.weight(model, 1), w0)  # nothing applied yet
    # MEMIT's textbook update on the facts' keys and residuals: ΔW = R Kᵀ (λC + K Kᵀ)⁻¹.
    from editscale.editing.keys import compute_keys
    from editscale.editing.values import compute_values

    facts = [dict(f, case_id=i) for i, f in enumerate(FACTS)]
    K = compute_keys(model, tok, layout, 1, facts, editor.templates).double().T  # (d_in, n)
    R = compute_values(model, tok, layout, 1, facts, editor.templates, QUICK, batch_size=8).residual.double().T
    C = covariance_standin(model, tok, layout, 1).double()
    want = R @ K.T @ torch.linalg.inv(EDIT.mom2_update_weight * C + K @ K.T)  # (d_out, d_in)
    torch.testing.assert_close(edit.delta(1).double(), want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
    with edit.applied(model):
        torch.testing.assert_close(layout.weight(model, 1), w0 + edit.delta(1))
    torch.testing.assert_close(layout.weight(model, 1), w0, rtol=0, atol=1e-6)
    edit.save(tmp_path / "e.safetensors")
    again = editscale.Edit.load(tmp_path / "e.safetensors")
    assert torch.equal(again.delta(1), edit.delta(1)) and again.provenance == edit.provenance
    assert again.provenance["algorithm"] == "memit" and len(again.provenance["C_sha256"]) == 64
    assert [f["subject"] for f in again.provenance["facts"]] == ["Danielle Darrieux", "Angola"]


def test_an_edit_refuses_a_model_of_another_name_or_shape(tiny, tiny_gpt2_dir):
    model, tok, layout = tiny
    edit = make_editor(model, tok, layout).edit(FACTS[:1])
    other, _, _ = models.load(str(tiny_gpt2_dir))
    with pytest.raises(ValueError, match="made for model"):
        edit.apply(other)
    other.editscale_spec = model.editscale_spec
    with pytest.raises(ValueError, match="layer 1 is"):
        edit.apply(other)


def test_independent_edits_never_leak_and_sequential_edits_build_on_each_other(tiny):
    model, tok, layout = tiny
    w0 = layout.weight(model, 1).clone()
    editor = make_editor(model, tok, layout, "alphaedit")
    first, second = editor.edit(FACTS[:1]), editor.edit(FACTS[1:])
    alone = make_editor(model, tok, layout, "alphaedit").edit(FACTS[1:])
    torch.testing.assert_close(second.delta(1), alone.delta(1))  # the first left nothing behind
    with first.applied(model), pytest.raises(ValueError, match="sequential=True"):
        editor.edit(FACTS[1:])
    # Sequential: each solved on the model as the one before left it, applied at once, keys kept.
    key0 = keys.compute_keys(model, tok, layout, 1, FACTS[:1], editor.templates)  # (1, d_in) on W0
    s1 = editor.edit(FACTS[:1], sequential=True)
    torch.testing.assert_close(layout.weight(model, 1), w0 + s1.delta(1))
    assert editor.memories[1].size == 1
    torch.testing.assert_close(editor.memories[1].K[:, 0].float(), key0[0], rtol=1e-5, atol=1e-6)
    memory = copy.deepcopy(editor.memories[1])
    plain = editing.edit_batch(model, tok, layout, editor.config, [dict(FACTS[1], case_id=0)], editor.templates,
                               editor.solvers[1], memory=memory)  # by hand, on the model as s1 left it
    s2 = editor.edit(FACTS[1:], sequential=True)
    torch.testing.assert_close(s2.delta(1), plain.delta.float(), rtol=1e-5, atol=1e-9)
    assert editor.memories[1].size == 2
    torch.testing.assert_close(layout.weight(model, 1), w0 + s1.delta(1) + s2.delta(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["memit", "memit_seq", "rlsedit", "evoedit", "sphere", "alphaedit+rect",
                                       "memit_seq+nas"])
def test_every_kind_of_state_edits_a_window_sequentially_through_the_editor(tiny, algorithm):
    """Each editor over a window of two layers: sequential edits build on each other, the state each
    carries grows by their keys (none for MEMIT, which forgets: it once kept them here by mistake), and an
    independent edit after them is solved on the model as they left it. With NAS, μ is measured once,
    on the first edit's facts, before anything is applied."""
    model, tok, layout = tiny
    stats = {layer: covariance_standin(model, tok, layout, layer) for layer in (0, 1)}
    editor = editscale.Editor(model, tok, layout, algorithm=algorithm, layers=[0, 1], stats=stats, edit=EDIT,
                              value_settings=QUICK, progress=False)
    w0 = {layer: layout.weight(model, layer).clone() for layer in (0, 1)}
    first, second = editor.edit(FACTS[:1], sequential=True), editor.edit(FACTS[1:], sequential=True)
    for layer in (0, 1):
        torch.testing.assert_close(layout.weight(model, layer), w0[layer] + first.delta(layer) + second.delta(layer),
                                   rtol=1e-5, atol=1e-6)
        memory = editor.memories[layer]
        assert (memory is None) == (algorithm == "memit") and (memory is None or memory.size == 2)
    assert editor.edit(FACTS).delta(1).abs().sum() > 0
    assert (editor.anchor is not None) == algorithm.endswith("+nas") and first.provenance.get("nas_anchor") == editor.anchor
    editing.put_weights(model, layout, w0)


@pytest.mark.parametrize("fact,message", [
    ({"prompt": "{} is in", "subject": "", "target_new": "Rome"}, "fact 0: subject is empty"),
    ({"prompt": "{} is in", "subject": "Angola", "target_new": " "}, "fact 0: target_new is empty"),
    ({"prompt": "It is in", "subject": "Angola", "target_new": "Rome"}, "neither '{}' nor the subject"),
    ({"prompt": "{} is in", "subject": "Angola", "target_new": "Rome\nParis"}, "not a single trimmed line"),
    ({"prompt": "{} is in {}", "subject": "Angola", "target_new": "Rome"}, "exactly one '{}' and no other braces"),
    ({"prompt": "{} is in", "subject": "Angola", "target_new": "Rome "}, "not a single trimmed line"),
    ({"prompt": "Angola is {in}", "subject": "Angola", "target_new": "Rome"}, "contains a brace"),
    ({"prompt": "{} is in", "subject": "Angola", "target_new": 3}, "has no target_new"),
    ("Angola is in Rome", "give a dict"),
])
def test_bad_facts_raise_before_any_optimisation_naming_the_fact(tiny, fact, message, monkeypatch):
    model, tok, layout = tiny
    editor = make_editor(model, tok, layout)
    monkeypatch.setattr(values, "compute_values", lambda *a, **k: pytest.fail("optimised a bad fact"))
    with pytest.raises(ValueError, match=message):
        editor.edit([fact])


def test_the_subject_in_the_prompt_stands_for_its_placeholder(tiny):
    model, tok, layout = tiny
    editor = make_editor(model, tok, layout)
    filled = editor.edit([{"prompt": "Angola is located in", "subject": "Angola", "target_new": "Antarctica"}])
    templated = editor.edit(FACTS[1:])
    torch.testing.assert_close(filled.delta(1), templated.delta(1))


def test_an_exported_folder_loads_in_plain_transformers_with_the_edited_logits(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok, layout = tiny
    edit = make_editor(model, tok, layout).edit(FACTS)
    edit.apply(model)
    folder = editscale.export(model, tok, tmp_path / "edited")
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok("Danielle Darrieux is a citizen of", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ids).logits, model(**ids).logits, rtol=1e-5, atol=1e-5)
        edit.revert(model)
        assert not torch.allclose(loaded(**ids).logits, model(**ids).logits, atol=1e-5)  # the edit is in it
    listed = json.loads((folder / "editscale.json").read_text())
    assert listed["base_model"] == model.editscale_spec and listed["edits"][0]["facts"][0]["target_new"] == "Japan"


def test_the_command_line_edits_exports_and_asks(tiny_llama_dir, tmp_path):
    if SHARED is None:
        pytest.skip("C comes from the offline corpus")
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in FACTS) + "\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "editscale", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=tmp_path, timeout=600)
    done = run("edit", "--model", str(tiny_llama_dir), "--facts", str(facts), "--layers", "1", "--out", "edited",
               "--export", "--algorithm", "memit_seq+prune")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "edited" / "edit.safetensors").exists() and (tmp_path / "edited" / "config.json").exists()
    asked = run("ask", "edited", "Danielle Darrieux is a citizen of", "--tokens", "3")
    assert asked.returncode == 0 and asked.stdout.startswith("Danielle Darrieux is a citizen of"), asked.stderr
    with_edit = run("ask", str(tiny_llama_dir), "Danielle Darrieux is a citizen of", "--tokens", "3",
                    "--edit", "edited/edit.safetensors")
    assert with_edit.stdout == asked.stdout, with_edit.stderr  # the exported model is the edited one
    assert "one fact a line" in run("edit", "--help").stdout
    unknown = run("edit", "--model", str(tiny_llama_dir), "--facts", str(facts), "--out", "x", "--algorithm", "memit+nope")
    assert unknown.returncode != 0 and "add-ons after '+' are each one of prune, rect, nas" in unknown.stderr
    facts.write_text("not json\n")
    bad = run("edit", "--model", str(tiny_llama_dir), "--facts", str(facts), "--out", "x")
    assert bad.returncode != 0 and "line 1: not JSON" in bad.stderr


def test_a_window_editor_spreads_each_edit_and_builds_on_it_sequentially(tiny, tmp_path):
    """layers=[0, 1]: the Edit holds both layers' ΔW (their values are test_window's), applies and
    reverts both, saves and reloads; a sequential edit keeps keys per layer."""
    model, tok, layout = tiny
    stats = {layer: covariance_standin(model, tok, layout, layer) for layer in (0, 1)}
    editor = editscale.Editor(model, tok, layout, algorithm="alphaedit", layers=[1, 0], stats=stats, edit=EDIT,
                              value_settings=QUICK, progress=False)
    assert editor.layers == [0, 1] and editor.layer == 1
    edit = editor.edit(FACTS)
    assert sorted(edit.factors) == [0, 1]
    before = {layer: layout.weight(model, layer).clone() for layer in (0, 1)}
    with edit.applied(model):
        assert all(not torch.equal(layout.weight(model, layer), before[layer]) for layer in (0, 1))
    assert all(torch.allclose(layout.weight(model, layer), before[layer], atol=1e-6) for layer in (0, 1))
    edit.save(tmp_path / "w.safetensors")
    assert sorted(editscale.Edit.load(tmp_path / "w.safetensors").factors) == [0, 1]
    editor.edit(FACTS[:1], sequential=True)
    assert [editor.memories[layer].size for layer in (0, 1)] == [1, 1]  # one key kept at each layer
    with pytest.raises(ValueError, match="rome edits one layer"):
        editscale.Editor(model, tok, layout, algorithm="rome", layers=[0, 1], stats=stats, progress=False)
    with pytest.raises(ValueError, match="one C for a window"):
        editscale.Editor(model, tok, layout, layers=[0, 1], stats=stats[0], progress=False)


JUDGED = [dict(f, target_true=true, paraphrase_prompts=[f["prompt"].replace("{}", f["subject"])],
               neighborhood_prompts=["The man said he is a citizen of"])
          for f, true in zip(FACTS, ["France", "Africa"])]


def test_evaluate_scores_both_protocols_with_the_edit_applied_for_the_call_only(tiny):
    """`editscale.evaluate`: per fact and protocol, with the edit applied while it scores and the model
    unchanged after; what live says is `generate`'s greedy answer on the edited weights, and the
    neighbours' unchanged reading compares the edited model with the unedited one."""
    from editscale.editor import model_name

    model, tok, layout = tiny
    d_out, d_in = layout.weight(model, 1).shape
    g = torch.Generator().manual_seed(0)
    edit = editscale.Edit({1: (3.0 * torch.randn(d_out, 4, generator=g), torch.randn(d_in, 4, generator=g))},
                          {"model": model_name(model)})  # a strong random edit: it changes what the model says
    w0 = layout.weight(model, 1).clone()
    plain = editscale.evaluate(model, tok, JUDGED, layout=layout)
    edited = editscale.evaluate(model, tok, JUDGED, edit=edit, layout=layout)
    assert torch.equal(layout.weight(model, 1), w0)
    assert list(edited.protocol.unique()) == ["teacher_forced", "live"] and len(edited) == 2 * len(FACTS)
    tf = edited[edited.protocol == "teacher_forced"].set_index("fact")
    before = plain[plain.protocol == "teacher_forced"].set_index("fact")
    assert (tf.EM - before.EM).abs().max() > 1e-3  # the edit is in force while it scores
    live = edited[edited.protocol == "live"].set_index("fact")
    assert (plain[plain.protocol == "live"].NU == 100).all()  # no edit: the model against itself
    assert (live.NU < 100).any()  # the neighbour's continuation changed under the edit
    with edit.applied(model):
        for i, fact in enumerate(JUDGED):
            ids = tok(fact["prompt"].replace("{}", fact["subject"]), return_tensors="pt")["input_ids"]
            out = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
            assert live.says[i].startswith(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)), i
    with pytest.raises(ValueError, match="fact 1: 'target_true' is missing"):
        editscale.evaluate(model, tok, [JUDGED[0], FACTS[1]], layout=layout)


def test_the_command_line_evaluates_both_protocols_side_by_side(tiny_llama_dir, tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("\n".join(json.dumps(f) for f in JUDGED) + "\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "editscale", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=tmp_path, timeout=600)
    done = run("evaluate", str(tiny_llama_dir), "--facts", str(facts))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "ES TF" in lines[0] and "ES live" in lines[0] and "NU live" in lines[0]
    assert len(lines) == 1 + len(JUDGED) + 2 and lines[-2].split()[:3] == ["all", "2", "facts"]
    facts.write_text(json.dumps(FACTS[0]) + "\n")
    bad = run("evaluate", "no-such-model/", "--facts", str(facts))  # the fact is refused before the model is sought
    assert bad.returncode == 2 and "fact 0: 'target_true' is missing" in bad.stderr
