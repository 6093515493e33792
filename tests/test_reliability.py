"""Nothing silent, nothing raw (docs/reliability.md): damaged artifacts that still parse, settings
that a job would die on, the command line's errors, and the library's guards and exact revert."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO, SHARED, copy_run, snakemake

import editscale
from editscale import artifacts, settings
from editscale.data import DATASETS
from editscale.settings import ConfigError
from editscale.workflow import experiments

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


# --- Artifacts: each checked on read against the digest its job recorded ------------------------

def test_a_file_changed_after_its_job_is_refused_naming_it_and_the_rebuild(tmp_path):
    source, made = tmp_path / "templates.yaml", tmp_path / "values.safetensors"
    artifacts.write_text("templates: ['{}', 'A. {}']\n", source)
    artifacts.record(source, [])
    artifacts.write_safetensors({"x": torch.ones(2)}, made)
    artifacts.record(made, [source])
    artifacts.verify(source)
    artifacts.verify(made)
    source.write_text("templates: ['{}']\n")  # cut short, and still valid YAML
    with pytest.raises(artifacts.UnreadableArtifact, match="templates.yaml is not what its job wrote.*--forcerun"):
        artifacts.verify(source)
    artifacts.write_text("templates: ['{}']\n", source)  # written again by its job: a new write drops the old digest
    artifacts.verify(source)
    artifacts.record(source, [])
    with pytest.raises(artifacts.UnreadableArtifact, match="was made from .*templates.yaml, which has changed"):
        artifacts.verify(made)  # what was made from the old one is stale


def test_a_table_or_tensor_file_carries_its_own_digest_so_a_lost_sidecar_checks_nothing_less(tmp_path):
    """Delete the `.sha256` beside a Parquet or safetensors file (a copy that drops dotfiles does) and
    alter the file keeping its metadata: the digest inside it still refuses it. A file without that
    digest (an older editscale's, or one written by hand) is refused too, with the rebuild command."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    table, tensors = tmp_path / "cases.parquet", tmp_path / "values.safetensors"
    artifacts.write_parquet(pd.DataFrame({"case_id": [1, 2], "ES": [100.0, 0.0]}), table)
    artifacts.write_safetensors({"v": torch.ones(3)}, tensors, {"layer": 1})
    for path in (table, tensors):
        artifacts.record(path, [])
        artifacts.verify(path)
        artifacts.forget(path)  # the sidecar is gone
        assert not list(tmp_path.glob(f".{path.name}.sha256"))
        artifacts.verify(path)  # its own digest still holds
    read = pq.read_table(table)
    pq.write_table(read.set_column(1, "ES", pa.array([100.0, 100.0])).replace_schema_metadata(read.schema.metadata),
                   table)  # a value changed, the old digest kept
    with pytest.raises(artifacts.UnreadableArtifact, match=r"cases.parquet is not what its job wrote \(content sha256"):
        artifacts.verify(table)
    with safe_open(str(tensors), framework="pt") as f:
        meta = dict(f.metadata())
    save_file({"v": 2 * load_file(tensors)["v"]}, str(tensors), metadata=meta)
    with pytest.raises(artifacts.UnreadableArtifact, match="values.safetensors is not what its job wrote.*--forcerun"):
        artifacts.verify(tensors)
    pd.DataFrame({"case_id": [1]}).to_parquet(table)  # by hand: no digest
    with pytest.raises(artifacts.UnreadableArtifact, match="cases.parquet carries no content digest.*--forcerun"):
        artifacts.verify(table)


def test_yaml_artifacts_are_read_with_their_keys_checked(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text("spec: m\nn_layers: [oops\n")
    with pytest.raises(artifacts.UnreadableArtifact, match="model.yaml cannot be read"):
        artifacts.read_yaml(path, {"n_layers": int})
    path.write_text("spec: m\n")
    with pytest.raises(artifacts.UnreadableArtifact, match="model.yaml has no n_layers of type int.*forcerun"):
        artifacts.read_yaml(path, {"n_layers": int})
    from editscale.editing.keys import load_templates

    path = tmp_path / "templates.yaml"
    path.write_text("templates: ['{}', 'no placeholder']\n")
    with pytest.raises(ValueError, match="each must hold one '{}'"):
        load_templates(path)


@pytest.mark.slow
@pytest.mark.skipif(SHARED is None, reason="needs the offline data folder")
def test_templates_cut_short_but_parsing_stop_the_next_job(tiny_run, tmp_path):
    """A templates file with its last template cut off is still valid YAML: the values job that
    reads it refuses it, naming the file and the command that rebuilds it."""
    workdir = copy_run(tiny_run[0], tmp_path / "run")
    (templates,) = (workdir / "results").rglob("templates-seed*.yaml")
    text = yaml.safe_load(templates.read_text())
    text["templates"] = text["templates"][:-1]
    templates.write_text(yaml.safe_dump(text))
    run = snakemake(workdir)
    assert run.returncode != 0
    logs = run.stderr + "".join(p.read_text() for p in (workdir / "results").rglob("logs/**/*.log"))
    assert f"{templates.relative_to(workdir)} is not what its job wrote" in logs and "--forcerun" in logs


# --- Settings a job would die on, refused before any job ----------------------------------------

def changed(**sections):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return settings.parse(config)


ALIASES = {name: set(d.aliases) for name, d in DATASETS.items()}


@pytest.mark.parametrize("sections,extra,keys", [
    (dict(data={"source": "auto-knowedit"}), {}, ["data.source = 'auto-knowedit' is an alias of zsre", "counterfact"]),
    (dict(data={"dataset": "zsre", "source": "auto-easyedit"}), {}, ["alias of counterfact", "auto-knowedit"]),
    (dict(templates={"top_k": 500}), {"model_config": {"vocab_size": 400}}, ["templates.top_k = 500", "400 tokens"]),
    (dict(templates={"n_tokens": 300}), {"model_config": {"max_position_embeddings": 256}},
     ["templates.n_tokens = 300", "256"]),
    (dict(layer=0, window={"size": 3}), {}, ["window.size = 3", "layer 0", "finding (f)"]),
])
def test_settings_a_job_would_die_on_are_named_before_any_job(sections, extra, keys):
    with pytest.raises(ConfigError) as err:
        settings.check(changed(**sections), n_layers=30, model_exists=True, aliases=ALIASES,
                       more=experiments.checks(), **extra)
    assert all(k in str(err.value) for k in keys), str(err.value)


def test_an_empty_corpus_is_refused_before_it_makes_a_nan_c(tmp_path):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n  \n")
    with pytest.raises(ConfigError, match="stats.corpus = .*empty.txt' is empty"):
        settings.check(changed(stats={"corpus": str(corpus)}), n_layers=30, model_exists=True)


def test_the_schema_refuses_negative_seeds(tmp_path):
    config = dict(CONFIG, data={**CONFIG["data"], "seed": -1})
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(tmp_path, "-n", cores=1)
    assert dry.returncode != 0 and "-1 is less than the minimum of 0" in dry.stdout + dry.stderr


# --- The library --------------------------------------------------------------------------------

def random_edit(model, layer: int, seed: int, rank: int = 2) -> editscale.Edit:
    from editscale.editor import model_name
    from editscale.models import layout_for

    d_out, d_in = layout_for(model).weight(model, layer).shape
    g = torch.Generator().manual_seed(seed)
    factors = {layer: (1e-2 * torch.randn(d_out, rank, generator=g), torch.randn(d_in, rank, generator=g))}
    return editscale.Edit(factors, {"model": model_name(model), "seed": seed})


def test_revert_restores_smollm2_bit_for_bit_in_any_order_and_every_cycle(smollm2):
    model, _, layout = smollm2
    w0 = {layer: layout.weight(model, layer).clone() for layer in (2, 3)}
    a, b, c = random_edit(model, 3, 0), random_edit(model, 3, 1), random_edit(model, 2, 2)
    for _ in range(5):  # cycles never drift
        a.apply(model)
        a.revert(model)
    assert torch.equal(layout.weight(model, 3), w0[3])
    a.apply(model)
    b.apply(model)
    c.apply(model)
    a.revert(model)  # out of order: b and c stay applied
    assert torch.equal(layout.weight(model, 2), w0[2] + c.delta(2))  # applied again on the original bits
    assert not torch.equal(layout.weight(model, 3), w0[3])
    b.revert(model)
    c.revert(model)
    assert all(torch.equal(layout.weight(model, layer), w0[layer]) for layer in w0)
    assert model.__dict__.get("editscale_edits") == []


def test_an_edit_is_applied_once_and_reverted_only_where_applied(smollm2):
    model, _, layout = smollm2
    w0 = layout.weight(model, 3).clone()
    edit = random_edit(model, 3, 5)
    with pytest.raises(ValueError, match="not applied to this model"):
        edit.revert(model)
    edit.apply(model)
    with pytest.raises(ValueError, match="already applied.*twice"):
        edit.apply(model)
    twin = editscale.Edit(dict(edit.factors), dict(edit.provenance))  # a reloaded copy is the same edit
    with pytest.raises(ValueError, match="already applied"):
        twin.apply(model)
    edit.revert(model)
    assert torch.equal(layout.weight(model, 3), w0)
    bad = random_edit(model, 3, 6)
    bad.factors[3][0][0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        bad.apply(model)
    assert torch.equal(layout.weight(model, 3), w0) and not model.__dict__.get("editscale_edits")


def test_edit_load_names_the_file_and_the_fix(tmp_path, smollm2):
    with pytest.raises(FileNotFoundError, match="no edit at .*missing.safetensors"):
        editscale.Edit.load(tmp_path / "missing.safetensors")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.safetensors cannot be read as an edit.*Edit.save"):
        editscale.Edit.load(tmp_path / "empty.safetensors")
    random_edit(smollm2[0], 3, 0).save(tmp_path / "edit.safetensors")
    data = (tmp_path / "edit.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors cannot be read as an edit"):
        editscale.Edit.load(tmp_path / "cut.safetensors")


def test_an_edit_file_is_signed_and_every_change_to_it_is_refused(tmp_path, caplog):
    """Edit.save signs its tensors and provenance; Edit.load refuses a file whose factors, layers or
    provenance changed, or whose structure is not an edit's, naming the file and the tensor or key.
    A hand-edited edit is used only after Edit.resign."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    made = editscale.Edit({1: (torch.randn(6, 2, generator=g), torch.randn(4, 2, generator=g))},
                          {"model": "m", "layers": [1], "facts": [{"subject": "Angola"}]})
    made.save(tmp_path / "edit.safetensors")
    assert editscale.Edit.load(tmp_path / "edit.safetensors").id == made.id
    signed = json.dumps(made.provenance)
    A, B = made.factors[1]

    def written(name, tensors, metadata):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / name), metadata=metadata)
        return tmp_path / name

    sha = {"editscale": signed, "editscale.id": made.id}
    changed = [
        (written("scaled.safetensors", {"layer1.A": 1000 * A, "layer1.B": B}, sha), "not what Edit.save wrote"),
        (written("moved.safetensors", {"layer2.A": A, "layer2.B": B}, sha), r"change layers \[2\], its provenance says \[1\]"),
        (written("told.safetensors", {"layer1.A": A, "layer1.B": B},
                 {**sha, "editscale": json.dumps({**made.provenance, "model": "other"})}), "not what Edit.save wrote"),
        (written("unsigned.safetensors", {"layer1.A": A, "layer1.B": B}, {"editscale": signed}), "carries no sha256"),
        (written("listed.safetensors", {"layer1.A": A, "layer1.B": B}, {**sha, "editscale": "[1, 2]"}),
         "'editscale' metadata is a list"),
        (written("named.safetensors", {"layerX.A": A, "layer1.B": B}, sha), "tensor 'layerX.A' is not a factor"),
        (written("negative.safetensors", {"layer-1.A": A, "layer1.B": B}, sha), "tensor 'layer-1.A' is not a factor"),
        (written("integer.safetensors", {"layer1.A": A.long(), "layer1.B": B}, sha), "tensor 'layer1.A' is 2-d torch.int64"),
        (written("half.safetensors", {"layer1.A": A.half(), "layer1.B": B}, sha), "tensor 'layer1.A' is 2-d torch.float16"),
        (written("lonely.safetensors", {"layer1.A": A}, sha), "layer 1 needs layer1.A"),
    ]
    for path, message in changed:
        with pytest.raises(ValueError, match=message) as err:
            editscale.Edit.load(path)
        assert path.name in str(err.value), str(err.value)
    with caplog.at_level("WARNING", logger="editscale"):
        resigned = editscale.Edit.resign(tmp_path / "scaled.safetensors")
    assert "re-signing" in caplog.text and torch.equal(resigned.factors[1][0], 1000 * A)
    assert editscale.Edit.load(tmp_path / "scaled.safetensors").id == resigned.id != made.id
    with pytest.raises(ValueError, match="tensor 'layerX.A' is not a factor"):
        editscale.Edit.resign(tmp_path / "named.safetensors")  # re-signing never makes a non-edit an edit


def test_the_editor_checks_c_when_it_is_made(tiny_llama_dir):
    model, tok, layout = editscale.models.load(str(tiny_llama_dir))
    d_in = layout.weight(model, 1).shape[1]
    with pytest.raises(ValueError, match=rf"is {d_in + 1} × {d_in + 1}; this model's layer 1 needs C of {d_in} × {d_in}"):
        editscale.Editor(model, tok, layout, layers=[1], stats=torch.eye(d_in + 1), progress=False)
    C = torch.eye(d_in)
    C[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        editscale.Editor(model, tok, layout, layers=[1], stats=C, progress=False)
    lower = torch.eye(d_in)
    lower[1, 0] = 0.5  # one triangle only: the solvers would read half of it
    with pytest.raises(ValueError, match=r"is not symmetric \(largest \|C − Cᵀ\| is 5.0e-01"):
        editscale.Editor(model, tok, layout, layers=[1], stats=lower, progress=False)
    for given, message in ((torch.eye(d_in).numpy(), "ndarray given for layer 1; give a torch.Tensor"),
                           (3, "int given for layer 1"), (torch.eye(d_in, dtype=torch.int64), "is torch.int64")):
        with pytest.raises((TypeError, ValueError), match=message):
            editscale.Editor(model, tok, layout, layers=[1], stats=given, progress=False)
    with pytest.raises(TypeError, match="stats: list given for layer 1"):
        editscale.Editor(model, tok, layout, layers=[1], stats=[torch.eye(d_in)], progress=False)
    symmetric = torch.eye(d_in) + 0.1
    assert editscale.Editor(model, tok, layout, layers=[1], stats=symmetric, progress=False).solvers


# --- The command line ---------------------------------------------------------------------------

def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "editscale", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_command_line_errors_are_one_line_with_exit_code_2_and_debug_shows_the_traceback(tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "{} is in", "subject": "Angola", "target_new": "Rome"}\n')
    (tmp_path / "taken").write_text("a file")
    # --out is checked before the model is loaded: a model path that does not exist is never reached.
    done = cli("edit", "--model", "./no-model", "--facts", str(facts), "--out", "taken", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "error: --out taken is a file" in done.stderr
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "edit.safetensors").write_bytes(b"earlier")
    done = cli("edit", "--model", "./no-model", "--facts", str(facts), "--out", "out", cwd=tmp_path)
    assert done.returncode == 2 and "already holds" in done.stderr and "--overwrite" in done.stderr
    assert (tmp_path / "out" / "edit.safetensors").read_bytes() == b"earlier"  # nothing overwritten
    done = cli("edit", "--model", "./no-model", "--facts", str(facts), "--out", "new", cwd=tmp_path)
    assert done.returncode == 2 and "--model ./no-model: no such folder or file here" in done.stderr
    done = cli("ask", "no-model/", "Angola is in", cwd=tmp_path)  # a path, never sent to the hub
    assert done.returncode == 2 and "model no-model/: no such folder" in done.stderr
    done = cli("ask", "smollm2-135m", "x", "--edit", "missing.safetensors", "--debug", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" in done.stderr and "no edit at missing.safetensors" in done.stderr
    done = cli("edit", "--facts", str(tmp_path / "nope.jsonl"), "--out", "x", cwd=tmp_path)
    assert done.returncode == 2 and "--facts" in done.stderr and "no such file" in done.stderr


def test_the_command_line_checks_its_files_before_any_model_loads(tmp_path, tiny_llama_dir):
    """Each of these stops with one line and exit 2 before a model is read: a UTF-16 facts file, a bad
    fact (even beside a model folder that would fail), --results naming a file, a model spec whose
    C cache would leave --results, and a model folder cut short or without a tokenizer."""
    good = '{"prompt": "{} is in", "subject": "Angola", "target_new": "Rome"}\n'
    (tmp_path / "utf16.jsonl").write_text(good, encoding="utf-16")
    (tmp_path / "facts.jsonl").write_text(good)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "{} is in {}", "subject": "Angola", "target_new": "Rome"}\n')
    (tmp_path / "a-file").write_text("x")
    cut = tmp_path / "cut"
    shutil.copytree(tiny_llama_dir, cut)
    weights = next(cut.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    untokenized = tmp_path / "untokenized"
    shutil.copytree(tiny_llama_dir, untokenized)
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json"):
        (untokenized / name).unlink(missing_ok=True)
    cases = [(("--facts", "utf16.jsonl", "--model", str(tiny_llama_dir)), "--facts utf16.jsonl: not UTF-8 text (it "
              "starts like UTF-16)"),
             (("--facts", "bad.jsonl", "--model", str(cut)), "bad.jsonl: fact 0: prompt must hold exactly one '{}'"),
             (("--facts", "facts.jsonl", "--model", str(cut), "--results", "a-file"), "--results a-file is a file"),
             (("--facts", "facts.jsonl", "--model", str(cut / "..")), "leaves the results folder"),
             (("--facts", "facts.jsonl", "--model", str(cut)), f"--model {cut}: not a whole model folder: "
              f"{weights.name} is cut short"),
             (("--facts", "facts.jsonl", "--model", str(untokenized)), "not a whole model folder: no tokenizer")]
    for args, message in cases:
        done = cli("edit", *args, "--layers", "1", "--out", "o", cwd=tmp_path)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr, (args, done.stderr)
    done = cli("ask", str(cut), "Angola is in", cwd=tmp_path)
    assert done.returncode == 2 and "is cut short" in done.stderr, done.stderr


@pytest.mark.skipif(SHARED is None, reason="C comes from the offline corpus")
def test_command_line_refuses_a_bad_fact_and_a_conflict_in_its_own_words(tmp_path, tiny_llama_dir):
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "{} is in {}", "subject": "Angola", "target_new": "Rome"}\n')
    done = cli("edit", "--model", str(tiny_llama_dir), "--facts", str(facts), "--layers", "1", "--out", "o",
               cwd=tmp_path)
    assert done.returncode == 2 and "fact 0: prompt must hold exactly one '{}'" in done.stderr, done.stderr
    facts.write_text('{"prompt": "{} is in", "subject": "Angola", "target_new": "Rome"}\n'
                     '{"prompt": "{} lies in", "subject": "Angola", "target_new": "Paris"}\n')
    done = cli("edit", "--model", str(tiny_llama_dir), "--facts", str(facts), "--layers", "1", "--out", "o",
               cwd=tmp_path)
    assert done.returncode == 2 and "conflicting edits" in done.stderr and "allow_conflicts" not in done.stderr


def test_a_finding_the_settings_leave_unmeasurable_gets_a_row_saying_why():
    """`layer: auto` picked layer 0 and window.size asks for the layers below it: (f) cannot be
    measured, and the findings table says so in its own row instead of dropping the claim."""
    import pandas as pd

    from editscale.workflow import experiments, findings

    empty = pd.DataFrame(columns=["case_id", "algorithm", "layer", "layers", "batch_size", "n_edits", "ES", "PS", "NS"])
    runs = {kind: empty for kind in ("sweep", "batch", "immediate", "retained")}
    why = "window.size = 3 takes the layers ending at the chosen layer 0, and there is no layer below it"
    table = findings.table(findings.Runs(runs, runs, 30, "0", None, settings.Findings(), {"f": why}),
                           experiments.claims())
    (row,) = table.itertuples(index=False)
    assert row.claim.startswith("f.") and row.verdict == "not measured" and row.statistic == why
    assert "not measured" in findings.markdown(table)


def test_a_missing_cuda_device_is_named_with_its_key_at_the_job(monkeypatch):
    from editscale.workflow.job import Job
    from editscale.workflow.stages import load_model

    s = settings.parse({"model": {"device": "cuda"}})
    job = Job("values", s, settings.Execution.of(s), {}, {}, {}, "log")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="model.device = cuda, but .* has no CUDA device.*model.device: cpu"):
        load_model(job)


def test_a_job_uses_the_threads_snakemake_gave_it_not_the_configs(tmp_path):
    """`--set-threads downstream=2` (or --cores below the config's threads) is what Snakemake counts
    as busy cores; torch inside the job must use exactly that many, whatever `threads:` says."""
    from types import SimpleNamespace

    from editscale.workflow.job import Job, logged

    smk = SimpleNamespace(config={"threads": 1}, rule="downstream", threads=2, input={}, output={}, wildcards={},
                          log=[str(tmp_path / "job.log")])
    before = torch.get_num_threads()
    try:
        job = Job.of(smk)
        with logged(job):
            inside = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert job.run.threads == 2 and inside == 2
