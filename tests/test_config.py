"""Configuration: one set of defaults, canonical params, and every cross-key check before any job."""

import re
from pathlib import Path

import pytest
import yaml
from conftest import snakemake

from editscale import algorithms, models, presets, settings
from editscale.settings import ConfigError
from editscale.workflow import experiments

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
ALGORITHMS = algorithms.ALGORITHMS
CHECKS = experiments.checks()  # each experiment's own cross-key checks, as common.smk passes them


def changed(**sections):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    return settings.parse(config)


def test_the_default_config_passes_and_keeps_the_references_value_optimisation():
    """The shipped config passes every check, and its value optimisation is the reference's
    Llama-3 hparams (kmeng01/memit and unified-model-editing: v_lr 5e-1, v_num_grad_steps 25,
    kl_factor 0.0625, v_weight_decay 1e-3, clamp_norm_factor 4; early stop below 5e-2), read here
    as literals, not from settings.py."""
    parsed = settings.parse(CONFIG)
    settings.check(parsed, n_layers=30, model_exists=True, algorithms=ALGORITHMS, more=CHECKS)
    v = parsed.values
    assert (v.lr, v.steps, v.kl_factor, v.weight_decay, v.clamp_factor, v.loss_threshold) == (
        0.5, 25, 0.0625, 1e-3, 4.0, 0.05)


@pytest.mark.parametrize("sections,keys", [
    (dict(results=""), ["results"]),
    (dict(batch={"sizes": [4, 16, 128]}), ["batch.sizes", "128", "data.n = 64"]),
    (dict(batch={"sizes": [48]}), ["batch.sizes", "48"]),
    (dict(sequential={"sizes": [8], "n": 6}), ["sequential.sizes", "8", "sequential.n = 6"]),
    (dict(sequential={"n": 80, "sizes": [1]}), ["sequential.n = 80", "data.n = 64"]),
    (dict(sweep={"n": 100}), ["sweep.n = 100", "data.n = 64"]),
    (dict(batch={"algorithms": ["rome", "memit"]}), ["batch.algorithms has rome"]),
    (dict(sequential={"algorithms": ["rome"], "sizes": [1, 2]}), ["sequential.algorithms has rome"]),
    (dict(evaluation={"protocols": ["live"]}), ["evaluation.protocols", "lacks teacher_forced"]),
])
def test_each_cross_key_contradiction_is_named(sections, keys):
    with pytest.raises(ConfigError) as err:
        settings.check(changed(**sections), n_layers=30, model_exists=True, algorithms=ALGORITHMS, more=CHECKS)
    assert all(k in str(err.value) for k in keys), str(err.value)


def test_variants_of_an_algorithm_are_checked_by_its_registry_entry():
    good = changed(batch={"algorithms": ["memit", "emmet", "emmet@emmet_lambda=10"]})
    settings.check(good, n_layers=30, model_exists=True, algorithms=ALGORITHMS, more=CHECKS, variant=algorithms.variant)
    cases = [(dict(batch={"algorithms": ["emmet@emmet_lambda=10.0"]}), ["batch.algorithms", "'emmet@emmet_lambda=10'"]),
             (dict(sequential={"algorithms": ["memit@emmet_lambda=1"]}), ["sequential.algorithms", "memit reads"]),
             (dict(batch={"algorithms": ["rome@mom2_update_weight=1"]}), ["batch.algorithms", "rome reads"])]
    for sections, keys in cases:
        with pytest.raises(ConfigError) as err:
            settings.check(changed(**sections), n_layers=30, model_exists=True, algorithms=ALGORITHMS, more=CHECKS,
                           variant=algorithms.variant)
        assert all(k in str(err.value) for k in keys), str(err.value)


def test_layers_beyond_the_model_and_missing_model_paths_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"layers \[30, 31\].*30 layers"):
        settings.check(changed(sweep={"layers": [1, 30]}, layer=31), n_layers=30, algorithms=ALGORITHMS, more=CHECKS)
    assert models.inspect_local(str(tmp_path / "nowhere")) == (False, None)
    assert models.inspect_local("meta-llama/Meta-Llama-3-8B") == (None, None)  # a hub id: not decidable offline
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"num_hidden_layers": 7}')
    assert models.inspect_local(str(tmp_path / "m")) == (True, 7)
    with pytest.raises(ConfigError, match="model.spec.*does not exist"):
        settings.check(changed(model={"spec": str(tmp_path / "nowhere")}), model_exists=False, algorithms=ALGORITHMS, more=CHECKS)


def test_a_model_spec_whose_folder_would_leave_the_results_is_refused(tmp_path):
    """results/<models.slug(spec)> must stay inside results/ and be no Snakemake wildcard: a spec
    ending in `..` (or `.`, or naming a folder with braces) is refused before any job, by the rule
    the paths are made with."""
    (tmp_path / "models" / "m").mkdir(parents=True)
    for spec in (str(tmp_path / "models" / "m" / ".."), ".", "..", "{model}"):
        with pytest.raises(ValueError, match="leaves the results folder"):
            models.slug(spec)
        with pytest.raises(ConfigError, match=r"model.spec: .*leaves the results folder"):
            settings.check(changed(model={"spec": spec}), algorithms=ALGORITHMS, more=CHECKS, slug=models.slug)
    with pytest.raises(ConfigError, match=r"stats.corpus: .*leaves the results folder"):
        settings.check(changed(stats={"corpus": str(tmp_path / "models" / "m" / "..")}), algorithms=ALGORITHMS,
                       more=CHECKS, slug=models.slug)
    assert models.slug(str(tmp_path / "models" / "m")) == "m"
    assert models.slug("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB--SmolLM2-135M"


def test_a_kl_prompt_holds_one_subject_slot():
    settings.check(changed(values={"kl_prompt": "{} is known for"}), algorithms=ALGORITHMS, more=CHECKS)
    for prompt in ("{} and {}", "is a", "{} is {a}", "{subject} is a"):
        with pytest.raises(ConfigError, match=r"values.kl_prompt = .* must hold one \{\} \(the subject\)"):
            settings.check(changed(values={"kl_prompt": prompt}), algorithms=ALGORITHMS, more=CHECKS)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="unknown keys.*'chunks'"):
        settings.parse({"values": {"chunks": 3}})


def test_params_are_canonical_and_hold_no_execution_settings():
    s = settings.parse(CONFIG)
    reordered = settings.parse({k: (dict(reversed(v.items())) if isinstance(v, dict) else v)
                                for k, v in reversed(CONFIG.items())})
    for section in ("model", "data", "templates", "stats", "values", "edit", "evaluation", "plots"):
        a, b = settings.results(getattr(s, section)), settings.results(getattr(reordered, section))
        assert repr(a) == repr(b), section  # Snakemake compares params by repr
    assert "device" not in settings.results(s.model) and "batch_size" not in settings.results(s.values)
    assert "batch_size" not in settings.results(s.evaluation) and "batch_tokens" not in settings.results(s.stats)


def test_schema_knows_every_registered_algorithm_and_setting():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    pattern = schema["definitions"]["algorithms"]["items"]["pattern"]
    assert re.match(r"\^\(([a-z_|]+)\)", pattern).group(1).split("|") == list(algorithms.ALGORITHMS)
    assert re.search(r"\(\\\+\(([a-z_|]+)\)\)\*", pattern).group(1).split("|") == list(algorithms.ADDONS)
    for name in ("emmet@emmet_lambda=1", "encore@mom2_update_weight=50,update_norm_lambda=1", "memit",
                 "memit_seq+prune", "sphere+prune+rect@rect_keep=20", "memit+nas"):
        assert re.fullmatch(pattern, name), name  # variants pass the schema; settings.check reads them
    for name in ("emmet@", "emmet@emmet_lambda", "emmet@@emmet_lambda=1", "memitt", "emmet@emmet_lambda=1,",
                 "memit+", "memit+nope", "prune"):
        assert not re.fullmatch(pattern, name), name
    sections = {f.name: f.default_factory for f in settings.dataclasses.fields(settings.Settings)
                if f.default_factory is not settings.dataclasses.MISSING}
    assert set(schema["properties"]) == set(settings.Settings.__dataclass_fields__)  # every section, no more
    for section, cls in sections.items():
        expanded = {"preset"} if section == "model" else set()  # presets.expand replaces it before parsing
        assert set(schema["properties"][section]["properties"]) == set(cls.__dataclass_fields__) | expanded, section
    assert schema["properties"]["model"]["properties"]["preset"]["enum"] == list(presets.PRESETS)


def test_the_shipped_config_departs_from_the_defaults_only_where_it_says_why():
    """config/config.yaml's values, compared with settings.py's defaults (two declarations written
    apart): they differ only where its comments say why (a 2-core machine's C settings)."""
    parsed, defaults = settings.parse(CONFIG), settings.Settings()
    departures = {f"{section}.{key}" for section in CONFIG if isinstance(CONFIG[section], dict)
                  for key in CONFIG[section] if getattr(getattr(parsed, section), key)
                  != getattr(getattr(defaults, section), key)}
    assert departures == {"stats.max_length", "stats.batch_tokens"}


def test_a_contradiction_stops_snakemake_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["batch"]["sizes"] = [4, 128]
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(tmp_path, "-n", cores=1)
    assert dry.returncode != 0 and "batch.sizes has 128" in dry.stdout + dry.stderr
    assert not (tmp_path / "results").exists()


def test_the_config_readme_is_generated_from_the_schema_and_defaults():
    """config/README.md is `python -m editscale.workflow.configdoc`'s output: regenerate it, don't edit it."""
    from editscale.workflow import configdoc

    assert (REPO / "config" / "README.md").read_text() == configdoc.render()


# Library parameters named like a setting whose literal default is deliberate: they are not that setting.
OWN_DEFAULTS = {
    ("evaluation/fluency.py", "generate", "seed"): "the sampling seed of one call; no setting",
    ("evaluation/fluency.py", "generate", "batch_size"): "prompts a forward pass generates for (execution)",
    ("evaluation/fluency.py", "perplexity", "batch_size"): "texts a forward pass (execution)",
    ("evaluation/fluency.py", "perplexity", "max_tokens"): "a plain corpus budget; the workflow passes drift_tokens",
    ("evaluation/fluency.py", "generation_entropy", "seed"): "the sampling seed of one call; no setting",
    ("evaluation/fluency.py", "generation_entropy", "batch_size"): "prompts a forward pass (execution)",
    ("evaluation/downstream.py", "forced_choice", "batch_size"): "items a forward pass scores (execution)",
}
LIBRARY = ["evaluation/metrics.py", "evaluation/fluency.py", "evaluation/downstream.py", "editor.py",
           "editing/batches.py"]


def literal_defaults(source: str, names: set) -> list[tuple[str, str, object]]:
    """(function, parameter, value) for each public function or method parameter in `source` that is
    named like a setting and defaults to a number written in place, not to the setting."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = [*zip(positional[len(positional) - len(a.defaults):], a.defaults),
                     *((k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None)]
            found += [(node.name, arg.arg, d.value) for arg, d in pairs if arg.arg in names
                      and isinstance(d, ast.Constant) and type(d.value) in (int, float)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in names \
                and isinstance(node.value, ast.Constant) and type(node.value.value) in (int, float):
            found.append(("(field)", node.target.id, node.value.value))  # a dataclass field, as EditConfig's
    return found


def test_library_defaults_come_from_settings_py():
    """Functions a user may call without the workflow take their defaults from settings.py's fields
    (written `Evaluation.batch_size`), never from numbers of their own that could drift from them
    (issue 18's table). A parameter that only shares a setting's name is listed with its reason."""
    import dataclasses

    names = {f.name for cls in vars(settings).values() if isinstance(cls, type) and dataclasses.is_dataclass(cls)
             for f in dataclasses.fields(cls) if type(f.default) in (int, float)}
    package = REPO / "src" / "editscale"
    found = {(module, fn, arg): value for module in LIBRARY
             for fn, arg, value in literal_defaults((package / module).read_text(), names)}
    assert set(found) - set(OWN_DEFAULTS) == set(), {k: found[k] for k in set(found) - set(OWN_DEFAULTS)}
    assert set(OWN_DEFAULTS) <= set(found)  # a reason for a default that is gone is stale: drop it


def test_the_defaults_check_sees_a_number_written_in_place():
    source = "def score(x, *, batch_size: int = 64, seed=Findings.seed):\n    pass\n" \
             "class C:\n    n_boot: int = 100\n    def _private(self, max_tokens=5):\n        pass\n"
    assert literal_defaults(source, {"batch_size", "seed", "n_boot", "max_tokens"}) == [
        ("score", "batch_size", 64), ("(field)", "n_boot", 100)]


@pytest.mark.parametrize("config,key", [
    ({"model": {"device": "tpu"}}, "model.device = 'tpu'"),
    ({"stats": {"corpus": "/nonexistent.txt"}}, "stats.corpus = '/nonexistent.txt' does not exist"),
    ({"data": {"source": "/nonexistent/records"}}, "data.source names '/nonexistent/records'"),
    ({"data": {"dataset": "squad"}}, "data.dataset = 'squad' is no dataset editscale knows"),
    ({"data": {"target": "alt"}}, "data.target = 'alt' is not a target of counterfact"),
])
def test_sources_and_devices_that_do_not_exist_stop_before_any_job(config, key):
    from editscale.data import DATASETS

    datasets = {name: d.targets for name, d in DATASETS.items()}
    with pytest.raises(ConfigError, match=re.escape(key)):
        settings.check(settings.parse(config), datasets=datasets)
    settings.check(settings.parse({}), datasets=datasets)  # the defaults pass


def test_the_old_data_counterfact_key_says_what_replaced_it():
    with pytest.raises(ValueError, match=re.escape("data: {dataset: counterfact, source: auto}")):
        settings.parse({"data": {"counterfact": "auto"}})


def test_a_damaged_artifact_names_its_path_and_how_to_rebuild_it(tmp_path):
    import torch

    from editscale import artifacts
    from editscale.editing.covariance import load_stats

    path = tmp_path / "layer3.safetensors"
    artifacts.write_safetensors({"C": torch.eye(3)}, path, metadata={"layer": 3})
    path.write_bytes(path.read_bytes()[:20])  # cut short on disk
    for read in (artifacts.read_tensors, load_stats, artifacts.read_metadata):
        with pytest.raises(artifacts.UnreadableArtifact, match=f"{re.escape(str(path))} cannot be read.*--forcerun"):
            read(path)
    table = tmp_path / "cases.parquet"
    table.write_bytes(b"PAR1 not really")
    with pytest.raises(artifacts.UnreadableArtifact, match="cases.parquet cannot be read"):
        artifacts.read_parquet(table)
