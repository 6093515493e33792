"""The workflow's configuration, parsed once into typed settings with one set of defaults.

`workflow/schemas/config.schema.yaml` checks types and ranges and describes every key; the
defaults live here and nowhere else. Each field is a *result* setting (changing it changes what
a stage computes, so it is a rule param and reruns that stage) or an *execution* setting
(device, batch sizes, chunking, threads, memory: changing it reruns nothing). `results(section)`
gives a section's result settings as a plain dict in field order, which is the canonical form
rule params need: Snakemake compares params by their repr, and reordering keys in a copied
config must not look like a change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from editscale import domains, presets
from editscale.domains import Domain, problems


def execution(default=None, domain: Domain | None = None, **kw):
    """A field that changes how a stage runs, never what it computes."""
    if "default_factory" not in kw:
        kw["default"] = default
    return field(metadata={"execution": True, "domain": domain}, **kw)


def setting(default, domain: Domain):
    """A setting with its domain (`domains.Domain`), declared here once for every entry point."""
    return field(default=default, metadata={"domain": domain})


POSITIVE, NON_NEGATIVE = Domain(exclusive_minimum=0), Domain(minimum=0)
COUNT, SEED = Domain("integer", minimum=1), Domain("integer", minimum=0)


@dataclass(frozen=True)
class Model:
    spec: str = "smollm2-135m"
    dtype: str = "float32"
    layout: dict | None = None
    revision: str | None = None  # a hub commit, for a hub id
    device: str = execution("cpu")


@dataclass(frozen=True)
class Data:
    dataset: str = "counterfact"  # an entry of data.registry.DATASETS
    source: Any = "auto"  # auto (or a dataset's auto-… alias), a file, folder or URL, or a list of them
    target: str = "auto"  # the edit target, where the dataset offers a choice (zsRE: answers or alt); auto: its default
    n: int = setting(64, COUNT)
    seed: int = setting(0, SEED)
    unique_subjects: bool = True


@dataclass(frozen=True)
class Templates:
    seed: int = setting(0, SEED)
    n_tokens: int = setting(10, COUNT)
    top_k: int = setting(5, COUNT)


@dataclass(frozen=True)
class Stats:
    corpus: str = "auto"
    max_tokens: int = setting(20000, COUNT)
    max_length: Any = "auto"  # an int, or "auto": the model's context length
    skip_first_token: bool = False
    batch_tokens: int = execution(8192, COUNT)


@dataclass(frozen=True)
class ValueSettings:
    """Value optimisation (values.py); defaults from the reference's Llama configurations."""
    lr: float = setting(0.5, POSITIVE)
    steps: int = setting(25, COUNT)  # loss evaluations; the last one is not followed by an update
    loss_threshold: float = setting(0.05, Domain())
    kl_factor: float = setting(0.0625, NON_NEGATIVE)
    weight_decay: float = setting(1e-3, NON_NEGATIVE)
    clamp_factor: float = setting(4.0, POSITIVE)
    kl_prompt: str = "{} is a"
    early_stop: str = setting("loss", Domain("string", choices=("loss", "most_probable")))  # most_probable: MPES (ENCORE), as well as the loss threshold
    most_probable_hold: int = setting(2, COUNT)  # MPES stops at the hold-th evaluation with every target token top-1 (not reset)
    batch_size: int = execution(8, COUNT)  # 32 was 5% faster still on 2 cores, but a values job then held 8.5 GB
    chunk: int = execution(8, COUNT)  # records a values job saves at a time, rounded up to whole forwards of batch_size


@dataclass(frozen=True)
class EditSettings:
    """What the algorithms read (each reads only its own: algorithms.registry)."""
    mom2_update_weight: float = setting(100.0, POSITIVE)  # MEMIT's λ (EMMET scales C by it too); scale with d_in
    emmet_lambda: float = setting(0.1, NON_NEGATIVE)
    nullspace_threshold: float = setting(0.01, NON_NEGATIVE)
    alphaedit_l2: float = setting(10.0, NON_NEGATIVE)
    update_norm_lambda: float = setting(0.13, NON_NEGATIVE)  # ENCORE's α; its Llama-3 value 20 at λ = 15000, kept in ratio to λ = 100
    evoedit_l2: float = setting(4.0, NON_NEGATIVE)  # EvoEdit's α (its Llama-3-8B and Llama-2-7B value; GPT2-XL 1)
    sphere_ratio: float = setting(0.5, Domain(minimum=0, maximum=1))  # SPHERE's η: the share of W's energy its directions hold
    sphere_strength: float = setting(0.5, Domain(minimum=0, maximum=1))  # SPHERE's α: the share of ΔW along them removed
    rect_keep: float = setting(40.0, Domain(exclusive_minimum=0, maximum=100))  # +rect: percent of each batch's ΔW entries kept
    on_ill_conditioned: str = setting("raise", Domain("string", choices=("raise", "ridge", "pinv")))
    allow_conflicts: bool = execution(False)  # a guard, not a result: same subject, other target, one batch


@dataclass(frozen=True)
class Sweep:
    layers: tuple = (1, 2, 3, 4)
    algorithms: tuple = ("rome", "memit", "emmet")
    n: int = setting(8, COUNT)


@dataclass(frozen=True)
class Batch:
    algorithms: tuple = ("memit", "emmet")
    sizes: tuple = (4, 16, 64)


@dataclass(frozen=True)
class Sequential:
    algorithms: tuple = ("memit", "emmet", "alphaedit", "encore")
    sizes: tuple = (1, 2, 4)
    n: int = setting(4, COUNT)
    retained_every_edits: int = setting(2, COUNT)  # retained evaluation every this many edits (a multiple of every B ≤ it), and at the end
    snapshot_every: int = execution(256, COUNT)


@dataclass(frozen=True)
class Window:
    """Finding (f): single-layer editing against a window of layers (MEMIT's spread), at the largest
    batch and at the end of the longest sequential run. `layers` names the window; else `size` > 0
    takes the `size` layers ending at the chosen layer; neither: no comparison."""
    layers: tuple = ()
    size: int = setting(0, Domain("integer", minimum=0))


@dataclass(frozen=True)
class Evaluation:
    fluency_cases: int = setting(2, Domain("integer", minimum=0))
    fluency_tokens: int = setting(30, COUNT)
    drift_tokens: int = setting(2000, COUNT)
    # teacher_forced always runs (the layer choice and every edit job read it); live adds a scoring job
    # beside each job that scores, so that it reruns nothing else (evaluation/live.py)
    protocols: tuple = ("teacher_forced",)
    batch_size: int = execution(128, COUNT)
    max_tokens: int = execution(2048, COUNT)


@dataclass(frozen=True)
class Findings:
    """The statistics behind the verdicts (workflow/findings.py)."""
    n_boot: int = setting(2000, Domain("integer", minimum=100))
    seed: int = setting(0, SEED)
    margin: float = setting(5.0, POSITIVE)  # Score points a claim of near-equality tolerates
    early_fraction: float = setting(0.25, Domain(exclusive_minimum=0, maximum=1))  # layers in this first fraction of the model count as early


@dataclass(frozen=True)
class Downstream:
    """Finding (g), the downstream check (evaluation/downstream.py): AlphaEdit's 100 test items a task
    at 0 shots, and the forced choice, which needs no parsing. No tasks: the workflow skips it (each
    point costs minutes on a CPU); the library and the command line check every task when none is named."""
    tasks: tuple = ()
    n_tests: int = setting(100, COUNT)
    shots: int = setting(0, Domain("integer", minimum=0, maximum=10))  # glue_eval's pool of 10 (downstream.POOL)
    method: str = setting("forced", Domain("string", choices=("forced", "generate")))  # generate: greedy, gen_len tokens, the reference's parsing rule
    gen_len: int = setting(3, COUNT)  # the unified-model-editing pipeline's (AlphaEdit: 5)


@dataclass(frozen=True)
class Plots:
    style: str = "whitegrid"
    context: str = "paper"
    palette: str = "colorblind"
    formats: tuple = ("png", "pdf")


@dataclass(frozen=True)
class Resources:
    """Per job: `model` jobs load the model, `light` ones only read tables. Execution only."""
    model_mem_mb: int = setting(8000, COUNT)
    model_runtime: int = setting(60, COUNT)  # minutes
    sequential_runtime: int = setting(120, COUNT)
    light_mem_mb: int = setting(2000, COUNT)
    light_runtime: int = setting(10, COUNT)
    gpus: Any = "auto"  # auto: 1 when model.device is cuda, else 0
    partition: str | None = None  # SLURM partition of jobs without a GPU (None: the cluster's default)
    gpu_partition: str | None = None  # SLURM partition of jobs with one


@dataclass(frozen=True)
class Library:
    """The library's and the command line's own defaults (`Editor`, `python -m editscale edit`), where
    the workflow has none: one algorithm at one layer, C cached under the workflow's results folder."""
    algorithm: str = "memit"
    layers: tuple = (3,)
    ask_tokens: int = 10  # tokens `python -m editscale ask` generates


@dataclass(frozen=True)
class Settings:
    results: str = "results"
    threads: int = 1
    layer: Any = "auto"  # a layer, a window of layers (a list, or "4-8"), or auto: the sweep's best layer
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    templates: Templates = field(default_factory=Templates)
    stats: Stats = field(default_factory=Stats)
    values: ValueSettings = field(default_factory=ValueSettings)
    edit: EditSettings = field(default_factory=EditSettings)
    sweep: Sweep = field(default_factory=Sweep)
    batch: Batch = field(default_factory=Batch)
    sequential: Sequential = field(default_factory=Sequential)
    window: Window = field(default_factory=Window)
    downstream: Downstream = field(default_factory=Downstream)
    evaluation: Evaluation = field(default_factory=Evaluation)
    findings: Findings = field(default_factory=Findings)
    plots: Plots = field(default_factory=Plots)
    resources: Resources = field(default_factory=Resources)


def window(layer) -> list[int]:
    """A `layer` setting or path name as the layers it edits, ascending: 3 -> [3]; [5, 4] -> [4, 5];
    "4-8" -> [4, 5, 6, 7, 8]; "4+6" -> [4, 6]."""
    if not isinstance(layer, (str, int)):
        return sorted(int(x) for x in layer)
    text = str(layer)
    if "-" in text:
        low, high = (int(x) for x in text.split("-"))
        if high < low:
            raise ValueError(f"layer window {text!r} runs backwards; write it low-high, e.g. 4-8")
        return list(range(low, high + 1))
    return sorted(int(x) for x in text.split("+"))


def layer_name(layer) -> str:
    """The name of a layer or window in artifact paths: "3", "4-8" for consecutive layers, "4+6"."""
    layers = window(layer)
    if len(layers) > 1 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return "+".join(map(str, layers))


def window_ending_at(w: Window, end: int) -> list[int]:
    """The `w.size` layers ending at layer `end` (fewer near layer 0): the one place a sized window's
    bounds are drawn, for (f)'s runs and for the layers C is computed at."""
    return list(range(max(0, end - w.size + 1), end + 1)) if w.size else []


def compared_window(w: Window, chosen) -> str | None:
    """Finding (f)'s window as a path name, for the chosen layer `chosen` (a layer or its name), or
    None: `w.layers`, else the `w.size` layers ending at the chosen layer."""
    if w.layers:
        return layer_name(w.layers)
    if w.size:
        layers = window_ending_at(w, window(chosen)[-1])
        return layer_name(layers) if len(layers) > 1 else None  # at layer 0 there is no window below
    return None


def parse(config: dict) -> Settings:
    """Typed settings from a (schema-validated) config dict; missing keys take the preset's values
    (`model.preset`, `presets.expand`), then the defaults above."""
    config = presets.expand(config)
    top = {}
    for f in fields(Settings):
        if f.name not in config:
            continue
        value = config[f.name]
        if f.name == "layer" and value != "auto":
            value = window(value)[0] if len(window(value)) == 1 else tuple(window(value))
        section = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        top[f.name] = _section(section, value) if section is not None else value
    unknown = set(config) - {f.name for f in fields(Settings)}
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    parsed = Settings(**top)
    outside = [p for f in fields(Settings) if dataclasses.is_dataclass(getattr(parsed, f.name))
               for p in problems(getattr(parsed, f.name), f.name)]
    if outside:
        raise ConfigError("settings outside their domains:\n  - " + "\n  - ".join(outside))
    return parsed


def _section(cls, value: dict):
    if cls is Data and "counterfact" in value:
        raise ValueError(f"data.counterfact is now data.source, beside data.dataset: write data: {{dataset: "
                         f"counterfact, source: {value['counterfact']}}}")
    unknown = set(value) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in config section {cls.__name__.lower()}")
    return cls(**{k: tuple(v) if isinstance(v, list) and k != "source" else v for k, v in value.items()})


def results(section, only=None) -> dict:
    """The settings of `section` that change results, in field order: the one rule for what counts,
    used by the rules' params, the run folders' identities and an Edit's provenance. Execution
    settings never count; `only` keeps just the named ones (an algorithm reads only its own)."""
    return {f.name: _plain(getattr(section, f.name)) for f in fields(section)
            if not f.metadata.get("execution") and (only is None or f.name in only)}


def digest(value) -> str:
    """The one digest of settings and what else a result depends on: sha256 of canonical JSON, 16 hex."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def as_dict(section) -> dict:
    """Every setting of a section, result and execution, as plain values."""
    return {f.name: _plain(getattr(section, f.name)) for f in fields(section)}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(value[k]) for k in sorted(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Execution:
    """Every execution setting a stage may read, and nothing else: these never rerun a stage."""
    device: str
    threads: int
    value_batch_size: int
    value_chunk: int
    eval_batch_size: int
    eval_max_tokens: int
    stats_batch_tokens: int
    snapshot_every: int
    allow_conflicts: bool

    @staticmethod
    def of(s: Settings) -> "Execution":
        return Execution(device=s.model.device, threads=s.threads, value_batch_size=s.values.batch_size,
                         value_chunk=s.values.chunk, eval_batch_size=s.evaluation.batch_size,
                         eval_max_tokens=s.evaluation.max_tokens, stats_batch_tokens=s.stats.batch_tokens,
                         snapshot_every=s.sequential.snapshot_every, allow_conflicts=s.edit.allow_conflicts)


class ConfigError(ValueError):
    """Settings that pass the schema but contradict each other; the message names every key involved."""


def check(s: Settings, *, n_layers: int | None = None, model_exists: bool | None = None,
          algorithms: dict | None = None, datasets: dict | None = None, variant=None,
          aliases: dict | None = None, model_config: dict | None = None, slug=None, more=()) -> None:
    """Cross-key checks, before any job starts. `n_layers` (the model's depth, when it is known
    without loading it), `model_exists` (False when model.spec names a missing local path),
    `algorithms` ({name: its registry entry: `max_batch`, `window`}), `datasets` ({name: its edit targets, the
    default first}), `variant` (algorithms.variant: a name -> (algorithm, overrides), ValueError
    for a bad one), `aliases` ({dataset: its `auto…` source aliases}) and `model_config` (the model's
    config.json, when it is on disk) and `slug` (models.slug: ValueError for a spec whose folder name
    would leave the results) come from the caller, which can look. `more`: the experiments'
    own checks (each `(settings) -> problems`, `experiments.checks()`), which live with them."""
    problems = []
    base = {}  # every algorithm or variant named in the config -> its algorithm's name
    for key in (f.name for f in fields(s) if hasattr(getattr(s, f.name), "algorithms")):  # the experiments'
        for name in getattr(s, key).algorithms:
            try:
                algorithm, overrides = variant(name) if variant else (None, {})
                base[name] = algorithm.name if algorithm else name
                for setting_name, value in overrides.items():  # the edit setting's own domain
                    domains.check(f"algorithm variant {name!r}: {setting_name}", value,
                                  domains.of(EditSettings, setting_name))
            except ValueError as error:
                problems.append(f"{key}.algorithms: {error}")
                base.setdefault(name, name)
    if "teacher_forced" not in s.evaluation.protocols:
        problems.append(f"evaluation.protocols = {list(s.evaluation.protocols)} lacks teacher_forced, which every "
                        f"edit job scores and the layer choice reads; list it, and add live beside it")
    if datasets is not None:
        if s.data.dataset not in datasets:
            problems.append(f"data.dataset = {s.data.dataset!r} is no dataset editscale knows; use one of "
                            f"{', '.join(sorted(datasets))}")
        elif s.data.target != "auto" and s.data.target not in datasets[s.data.dataset]:
            problems.append(f"data.target = {s.data.target!r} is not a target of {s.data.dataset}; use auto or one "
                            f"of {', '.join(datasets[s.data.dataset])}")
    if slug is not None:  # the model's and the corpus's names under the results: they must stay inside them
        for key, spec in (("model.spec", s.model.spec), ("stats.corpus", str(s.stats.corpus))):
            try:
                slug(spec)
            except ValueError as error:
                problems.append(f"{key}: {error}")
    if s.values.kl_prompt.count("{}") != 1 or s.values.kl_prompt.replace("{}", "").count("{") + \
            s.values.kl_prompt.replace("{}", "").count("}"):
        problems.append(f"values.kl_prompt = {s.values.kl_prompt!r} must hold one {{}} (the subject) and no other "
                        f"brace, e.g. '{{}} is a'")
    if not str(s.results).strip():
        problems.append("results is empty; name the folder for outputs, e.g. results: results")
    for key, algos, sizes in (("batch", s.batch.algorithms, s.batch.sizes),
                              ("sequential", s.sequential.algorithms, s.sequential.sizes)):
        for algorithm in algos:
            limit = getattr((algorithms or {}).get(base[algorithm]), "max_batch", None)
            if limit is not None and max(sizes) > limit:
                problems.append(f"{key}.algorithms has {algorithm}, which edits {limit} fact at a time, but "
                                f"{key}.sizes goes up to {max(sizes)}; drop it there (the sweep runs it)")
    if s.layer != "auto" and len(window(s.layer)) > 1:
        for key, algos in (("batch", s.batch.algorithms), ("sequential", s.sequential.algorithms)):
            for one in sorted({base[a] for a in algos if not getattr((algorithms or {}).get(base[a]), "window", True)}):
                problems.append(f"layer = {list(window(s.layer))} is a window, but {key}.algorithms has {one}, which "
                                f"edits one layer; drop it there, or name one layer")
    layers = [*s.sweep.layers, *(window(s.layer) if s.layer != "auto" else []), *s.window.layers]
    if n_layers is not None:
        beyond = sorted({layer for layer in layers if layer >= n_layers})
        if beyond:
            problems.append(f"layers {beyond} (sweep.layers / layer) are beyond the model's {n_layers} layers "
                            f"(0 to {n_layers - 1})")
    try:
        import torch

        torch.device(s.model.device)
    except (RuntimeError, ValueError):
        problems.append(f"model.device = {s.model.device!r} is no device torch knows; use cpu, cuda, cuda:N or mps")
    corpus = s.stats.corpus
    if isinstance(corpus, str) and corpus != "auto" and not corpus.startswith("hf:") and not Path(corpus).exists():
        problems.append(f"stats.corpus = {corpus!r} does not exist; name a .txt or .jsonl file, "
                        f"hf:<dataset>:<config>:<split>, or auto")
    sources = s.data.source if isinstance(s.data.source, (list, tuple)) else [s.data.source]
    for source in sources:
        if isinstance(source, str) and not source.startswith(("auto", "http://", "https://", "hf:")) \
                and "@" not in source and not Path(source).exists():
            problems.append(f"data.source names {source!r}, which does not exist; name a file or folder of "
                            f"{s.data.dataset} records, a URL, or auto")
    if aliases is not None and s.data.dataset in aliases:
        for source in sources:
            if isinstance(source, str) and source.startswith("auto") and source not in aliases[s.data.dataset]:
                owner = [name for name, known in aliases.items() if source in known]
                problems.append(f"data.source = {source!r} is {'an alias of ' + owner[0] if owner else 'no alias'}, "
                                f"not of data.dataset = {s.data.dataset}; use one of "
                                f"{', '.join(sorted(aliases[s.data.dataset]))}, a file or a URL")
    if isinstance(corpus, str) and corpus != "auto" and not corpus.startswith("hf:") and Path(corpus).is_file() \
            and not Path(corpus).read_text(errors="replace").strip():
        problems.append(f"stats.corpus = {corpus!r} is empty: C would have no keys; name a file with text")
    vocab = (model_config or {}).get("vocab_size")
    if vocab is not None and s.templates.top_k > vocab:
        problems.append(f"templates.top_k = {s.templates.top_k} is more than the model's {vocab} tokens; lower it")
    context = next((v for k, v in (model_config or {}).items() if k in ("max_position_embeddings", "n_positions")),
                   None)
    if context is not None and s.templates.n_tokens >= context:
        problems.append(f"templates.n_tokens = {s.templates.n_tokens} leaves no room in the model's context of "
                        f"{context} tokens; lower it")
    problems += [problem for own in more for problem in own(s)]  # each experiment's own cross-key checks
    if model_exists is False:
        problems.append(f"model.spec = {s.model.spec!r} names a local path that does not exist; fix the path, or "
                        f"give a hub id such as meta-llama/Meta-Llama-3-8B")
    if problems:
        raise ConfigError("the config contradicts itself:\n  - " + "\n  - ".join(problems))
