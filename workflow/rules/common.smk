# Settings, paths and names derived from config once, shared by every stage. An artifact path says
# what made it: model, record selection, algorithm, layer, batch size. Rule params carry result
# settings only, in canonical form (settings.results); execution settings reach scripts through
# the config and rerun nothing.
from editscale import settings as S
from editscale.algorithms import ALGORITHMS, variant
from editscale.data import DATASETS
from editscale.workflow.experiments import read_layer
from editscale.workflow.figures import FIGURES
from editscale.models import inspect_local, slug
from editscale.workflow.stages import resolve_data, selection_name, stats_id

SETTINGS = S.parse(config)
S.check(
    SETTINGS,
    **dict(zip(("model_exists", "n_layers"), inspect_local(SETTINGS.model.spec))),
    max_batch={name: a.max_batch for name, a in ALGORITHMS.items()},
    variant=variant,
    datasets={name: d.targets for name, d in DATASETS.items()},
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
    | {
        l
        for end in _ENDS
        for l in range(max(0, end - WINDOW.size + 1), end + 1)
        if WINDOW.size
    }
)
VALUES = f"{RUN_DIR}/values/layer{{layer}}/records{{start}}-{{end}}.safetensors"
LAYER_NAME = r"\d+(?:-\d+|(?:\+\d+)+)?"  # a layer (3) or a window (4-8, 4+6): settings.layer_name
SWEEP = f"{RUN_DIR}/sweep/{{algorithm}}-layer{{layer}}"
BEST_LAYER = f"{RUN_DIR}/sweep/best_layer.yaml"
BATCH = f"{RUN_DIR}/batch/{{algorithm}}-layer{{layer}}-b{{size}}"
SEQUENTIAL = f"{RUN_DIR}/sequential/{{algorithm}}-layer{{layer}}-b{{size}}"
BASELINE = f"{RUN_DIR}/baseline"
SUMMARY = f"{RUN_DIR}/summary/{{kind}}.parquet"
SUMMARY_KINDS = [
    "sweep",
    "batch",
    "immediate",
    "retained",
    "baseline",
    "quality",
    "health",
]
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


def edit_params(wildcards):
    """The edit settings the job's algorithm reads, and no others; a variant's overrides replace
    the config's (emmet@emmet_lambda=1: algorithms.registry)."""
    from editscale.algorithms import variant

    algorithm, overrides = variant(wildcards.algorithm)
    edit = {**S.results(SETTINGS.edit), **overrides}
    return {name: edit[name] for name in (*algorithm.settings, "on_ill_conditioned")}


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
    return S.layer_name(read_layer(checkpoints.best_layer.get().output[0]))


def compared_window():
    """(f)'s window as a path name, or None (settings.compared_window)."""
    return (
        S.compared_window(WINDOW, chosen_layer())
        if (WINDOW.layers or WINDOW.size)
        else None
    )


def sweep_cases(wildcards=None):
    return [
        f"{SWEEP.format(algorithm=a, layer=l)}.cases.parquet"
        for a in SETTINGS.sweep.algorithms
        for l in SETTINGS.sweep.layers
    ]


def _with_window(runs, sizes):
    """The runs at the chosen layer, and (f)'s at its window: every algorithm but ROME, at `sizes`."""
    window = compared_window()
    extra = (
        [(a, window, b) for a in runs["algorithms"] if a != "rome" for b in sizes]
        if window
        else []
    )
    layer = chosen_layer()
    return [(a, layer, b) for a in runs["algorithms"] for b in runs["sizes"]] + extra


def batch_cases(wildcards=None):
    runs = {"algorithms": SETTINGS.batch.algorithms, "sizes": SETTINGS.batch.sizes}
    return [
        f"{BATCH.format(algorithm=a, layer=layer, size=b)}.cases.parquet"
        for a, layer, b in _with_window(
            runs, [max(SETTINGS.batch.sizes)]
        )  # (f): the largest B
    ]


def sequential_outputs(kind):
    def outputs(wildcards=None):
        runs = {
            "algorithms": SETTINGS.sequential.algorithms,
            "sizes": SETTINGS.sequential.sizes,
        }
        return [
            f"{SEQUENTIAL.format(algorithm=a, layer=layer, size=b)}.{kind}.parquet"
            for a, layer, b in _with_window(
                runs, [min(SETTINGS.sequential.sizes)]
            )  # the longest run
        ]

    return outputs
