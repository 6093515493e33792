# Paths and names derived from config, shared by every stage. An artifact path says what
# made it: model, record selection, algorithm, layer, batch size.
import math

from editscale.experiments import read_layer
from editscale.models import slug
from editscale.stages import selection_name

RESULTS = config.get("results", "results")
MODEL = slug(config["model"]["spec"])
SELECTION = selection_name(config["data"])
MODEL_DIR = f"{RESULTS}/{MODEL}"
RUN_DIR = f"{MODEL_DIR}/{SELECTION}"
MODEL_MANIFEST = f"{MODEL_DIR}/model.yaml"  # an input wherever the model is loaded, so one job prepares it
RECORDS = f"{RESULTS}/records/{SELECTION}.parquet"
TEMPLATES = f"{MODEL_DIR}/templates-seed{config['templates']['seed']}.yaml"
STATS_ID = "{}-{}tok-len{}{}".format(  # every setting that changes C
    "auto" if config["stats"]["corpus"] == "auto" else slug(str(config["stats"]["corpus"])),
    config["stats"]["max_tokens"],
    config["stats"].get("max_length", "auto"),
    "-nofirst" if config["stats"].get("skip_first_token", False) else "",
)
STATS = f"{MODEL_DIR}/stats/{STATS_ID}/layer{{layer}}.safetensors"
CHUNK = config["values"]["chunk"]
VALUES = f"{RUN_DIR}/values/layer{{layer}}/chunk{{chunk}}.safetensors"
SWEEP = f"{RUN_DIR}/sweep/{{algorithm}}-layer{{layer}}"
BEST_LAYER = f"{RUN_DIR}/sweep/best_layer.yaml"
BATCH = f"{RUN_DIR}/batch/{{algorithm}}-layer{{layer}}-b{{size}}"
SEQUENTIAL = f"{RUN_DIR}/sequential/{{algorithm}}-layer{{layer}}-b{{size}}"
BASELINE = f"{RUN_DIR}/baseline"
SUMMARY = f"{RUN_DIR}/summary/{{kind}}.parquet"
FIGURES = ["sweep", "batch", "sequential", "immediate_vs_retained"]
PLOT = f"{RUN_DIR}/plots/{{name}}.png"
ENV = "../../envs/editscale.yaml"  # relative to the rule files
GPU = 1 if str(config["model"].get("device", "cpu")).startswith("cuda") else 0
THREADS = config.get("threads", 1)  # torch threads per model job; jobs run side by side up to --cores
N_SWEEP = config["sweep"]["n"]
N_SEQ = config["sequential"]["n"]


def value_chunks(layer, n):
    return [VALUES.format(layer=layer, chunk=c) for c in range(math.ceil(n / CHUNK))]


def chosen_layer():
    """`layer: auto` takes the sweep's best layer (a checkpoint); a number overrides it."""
    if config["layer"] != "auto":
        return int(config["layer"])
    return read_layer(checkpoints.best_layer.get().output[0])


def sweep_cases(wildcards=None):
    return [f"{SWEEP.format(algorithm=a, layer=l)}.cases.parquet"
            for a in config["sweep"]["algorithms"] for l in config["sweep"]["layers"]]


def batch_cases(wildcards=None):
    layer = chosen_layer()
    return [f"{BATCH.format(algorithm=a, layer=layer, size=b)}.cases.parquet"
            for a in config["batch"]["algorithms"] for b in config["batch"]["sizes"]]


def sequential_outputs(kind):
    def outputs(wildcards=None):
        layer = chosen_layer()
        return [f"{SEQUENTIAL.format(algorithm=a, layer=layer, size=b)}.{kind}.parquet"
                for a in config["sequential"]["algorithms"] for b in config["sequential"]["sizes"]]

    return outputs
