# Settings, paths and names derived from config once, shared by every stage. An artifact path says
# what made it: model, record selection, algorithm, layer, batch size. Every rule runs one script
# (scripts/run.py: its job, editscale.workflow.job) and has one param, the digest of the result
# settings its stage counts; execution settings reach jobs through the config and rerun nothing.
# The experiments' targets, summary kinds and figures come from their registry (EXPERIMENTS).
from editscale import settings as S
from editscale.algorithms import ALGORITHMS, variant
from editscale.data import DATASETS
from editscale.editing.stats import stats_id
from editscale.models import inspect_local, local_config, slug
from editscale.workflow import experiments as X
from editscale.workflow.dispatch import params as job_params
from editscale.workflow.stages import resolve_data, selection_name

SETTINGS = S.parse(config)
S.check(
    SETTINGS,
    **dict(zip(("model_exists", "n_layers"), inspect_local(SETTINGS.model.spec))),
    algorithms=ALGORITHMS,
    variant=variant,
    more=X.checks(),
    datasets={name: d.targets for name, d in DATASETS.items()},
    aliases={name: set(d.aliases) for name, d in DATASETS.items()},
    model_config=local_config(SETTINGS.model.spec),
    slug=slug,
)
RESULTS = SETTINGS.results
MODEL_PARAMS = S.results(SETTINGS.model)
DATA_PARAMS = resolve_data(S.results(SETTINGS.data))  # `auto` resolved once, here
MODEL = slug(SETTINGS.model.spec)
SELECTION = selection_name(DATA_PARAMS)
MODEL_DIR = f"{RESULTS}/{MODEL}"
RUN_DIR = f"{MODEL_DIR}/{SELECTION}"
MODEL_MANIFEST = f"{MODEL_DIR}/model.yaml"  # an input wherever the model is loaded, so one job prepares it
RECORDS = f"{RESULTS}/records/{SELECTION}.parquet"
TEMPLATES = f"{MODEL_DIR}/templates-seed{SETTINGS.templates.seed}.yaml"
STATS_ID = stats_id(SETTINGS.stats)  # every setting that changes C
STATS = f"{MODEL_DIR}/stats/{STATS_ID}/layer{{layer}}.safetensors"
WINDOW = SETTINGS.window  # finding (f): the chosen layer against a window
# One statistics pass fills every layer a run can edit: the sweep's, a fixed layer's or window's,
# and (f)'s window: named, or `size` layers ending at the chosen layer, which auto picks among the sweep's.
_ENDS = (
    S.window(SETTINGS.layer)[-1:]
    if SETTINGS.layer != "auto"
    else list(SETTINGS.sweep.layers)
)
STATS_LAYERS = sorted(
    set(SETTINGS.sweep.layers)
    | (set(S.window(SETTINGS.layer)) if SETTINGS.layer != "auto" else set())
    | set(WINDOW.layers)
    | {l for end in _ENDS for l in S.window_ending_at(WINDOW, end)}
)
VALUES = f"{RUN_DIR}/values/layer{{layer}}/records{{start}}-{{end}}.safetensors"
LAYER_NAME = r"\d+(?:-\d+|(?:\+\d+)+)?"  # a layer (3) or a window (4-8, 4+6): settings.layer_name
BEST_LAYER = f"{RUN_DIR}/sweep/best_layer.yaml"


# A run's file and its live twin's (`.live` before the suffix) must never match each other's rule.
wildcard_constraints:
    layer=LAYER_NAME,
    size=r"\d+",


BASELINE = f"{RUN_DIR}/baseline"
BASELINE_CASES = [f"{BASELINE}.cases.parquet"] + (
    [f"{BASELINE}.live.cases.parquet"]
    if "live" in SETTINGS.evaluation.protocols
    else []
)  # every protocol's
SUMMARY = f"{RUN_DIR}/summary/{{kind}}.parquet"
SUMMARY_SOURCES = X.summary_sources()  # kind -> (experiment, output): summarised
# kind -> (experiment, output): stacked as they are
COLLECTED_SOURCES = X.collected_sources()
SUMMARY_KINDS = [*X.summary_groups(), *COLLECTED_SOURCES]
PROTOCOLS = (
    SETTINGS.evaluation.protocols
)  # teacher_forced, and live: each run's live twin job
LIVE = "live" in PROTOCOLS
FIGURES = X.figure_files(PROTOCOLS)  # file name -> its figure (whose caption it takes)
FINDINGS = f"{RUN_DIR}/summary/findings.parquet"
PLOT = f"{RUN_DIR}/plots/{{name}}.png"
ENV = "../envs/editscale.yaml"  # relative to the rule files
THREADS = (
    SETTINGS.threads
)  # torch threads per model job; jobs run side by side up to --cores
N_SWEEP = SETTINGS.sweep.n
N_SEQ = SETTINGS.sequential.n

# Value files cover record ranges cut where the sweep's records end and every VALUE_BLOCK records, so
# no record is optimised twice and long ranges run as parallel jobs. The cuts are fixed, not a
# setting: how a job chunks its range is execution only. A consumer reads the files holding its records.
VALUE_BLOCK = 64
VALUE_CUTS = sorted(
    {N_SWEEP, SETTINGS.data.n, *range(VALUE_BLOCK, SETTINGS.data.n, VALUE_BLOCK)}
)


def value_files(layer, n):
    """The value files holding records [0, n) at `layer` (the last may hold more); a window's are
    its last layer's, where v* is optimised."""
    starts = [0, *VALUE_CUTS[:-1]]
    return [
        VALUES.format(layer=S.window(layer)[-1], start=s, end=e)
        for s, e in zip(starts, VALUE_CUTS)
        if s < n
    ]


def window_stats(wildcards):
    """C of every layer the job edits: one file a layer, all from one statistics pass."""
    return [STATS.format(layer=layer) for layer in S.window(wildcards.layer)]


def params(rule):
    """A rule's one param: the digest of the result settings its stage counts (dispatch.params)."""
    return lambda wildcards: job_params(rule, SETTINGS, wildcards)


def experiment_path(name, kind=None):
    """The pattern of one job's files of experiment `name` (kind: its logs or benchmarks)."""
    folder = f"{name}" if kind is None else f"{kind}/{name}"
    return f"{RUN_DIR}/{folder}/{X.EXPERIMENTS[name].stem}"


def experiment_outputs(name):
    """A job's named outputs, as its registry entry declares them."""
    return {
        output: experiment_path(name) + suffix
        for output, suffix in X.EXPERIMENTS[name].outputs.items()
    }


def live_outputs(name):
    """A live twin's named outputs: its experiment's, `.live` before each suffix."""
    entry = X.EXPERIMENTS[name]
    return {
        output: f"{experiment_path(name)}.live{entry.outputs[output]}"
        for output in entry.live_outputs
    }


def outputs_of(name, output, layer=None, live=LIVE):
    """The files `output` of every job of experiment `name` in this config (X.jobs: its own and
    those another experiment adds), or of those at the job's `layer` wildcard when `layer` is set;
    with `live`, their live twins' too, where the experiment has one for that output.
    """
    entry = X.EXPERIMENTS[name]
    suffixes = [entry.outputs[output]]
    if live and output in entry.live_outputs:
        suffixes.append(f".live{entry.outputs[output]}")

    def files(wildcards=None):
        return [
            (experiment_path(name) + suffix).format(**w)
            for suffix in suffixes
            for w in X.jobs(name, SETTINGS, chosen_layer, compared_window)
            if not layer or w["layer"] == wildcards.layer
        ]

    return files


def partition(name):
    return (
        {"slurm_partition": name} if name else {}
    )  # none: the cluster's default partition


def model_resources(runtime=None, gpus=None):
    """mem_mb, runtime, gpu and partition of a job that loads the model (config `resources:`)."""
    res = SETTINGS.resources
    if gpus is None:
        gpus = (
            res.gpus
            if res.gpus != "auto"
            else int(str(SETTINGS.model.device).startswith("cuda"))
        )
    return dict(
        mem_mb=res.model_mem_mb,
        runtime=runtime or res.model_runtime,
        gpu=gpus,
        **partition(res.gpu_partition if gpus else res.partition),
    )


LIGHT = dict(
    mem_mb=SETTINGS.resources.light_mem_mb,
    runtime=SETTINGS.resources.light_runtime,
    **partition(SETTINGS.resources.partition),
)


def chosen_layer():
    """The path name of the layer or window the batch and sequential experiments edit: `layer: auto`
    takes the sweep's best layer (a checkpoint); a number or a window overrides it."""
    if SETTINGS.layer != "auto":
        return S.layer_name(SETTINGS.layer)
    return S.layer_name(X.read_layer(checkpoints.best_layer.get().output[0]))


def compared_window():
    """(f)'s window as a path name, or None (settings.compared_window)."""
    return (
        S.compared_window(WINDOW, chosen_layer())
        if (WINDOW.layers or WINDOW.size)
        else None
    )


def collected(kind):
    """The tables stacked into `kind`: the unedited model's fluency and drift lead the quality
    table, at 0 edits."""

    def files(wildcards):
        lead = [f"{BASELINE}.quality.parquet"] if kind == "quality" else []
        return lead + outputs_of(*COLLECTED_SOURCES[kind])(wildcards)

    return files
