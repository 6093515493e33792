"""Workflow stages: what each Snakemake rule runs, from plain config values to artifacts.

Scripts under `scripts/` only pass Snakemake's params, inputs and outputs here.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import yaml

from . import artifacts, data, models


@contextlib.contextmanager
def logged(log_path: str | Path):
    """Send this library's log records to the rule's log file (and stderr) for the block."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(log_path, mode="w"), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("editscale")
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    except Exception:
        root.exception("stage failed")
        raise
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def prepare_model(model_config: dict, manifest_path: str | Path) -> None:
    """Resolve and load the model once (converting a GGUF if needed); record what was loaded."""
    spec = model_config["spec"]
    model, _, layout = models.load(spec, dtype=model_config.get("dtype", "float32"), device="cpu",
                                   layout=model_config.get("layout"))
    manifest = {
        "spec": spec,
        "folder": models.resolve(spec),
        "model_type": model.config.model_type,
        "n_layers": layout.n_layers(model),
        "layout": layout.to_dict(),
        "edited_weight_shape": list(layout.weight(model, 0).shape),
    }
    artifacts.write_text(yaml.safe_dump(manifest, sort_keys=False), manifest_path)


def select_records(data_config: dict, out_path: str | Path) -> None:
    sources = data_config["counterfact"]
    if sources == "auto":
        sources = data.default_sources()
    records = data.load_counterfact(
        sources, n=data_config.get("n"), seed=data_config.get("seed", 0),
        unique_subjects=data_config.get("unique_subjects", True),
    )
    logging.getLogger(__name__).info("selected %d records from %s", len(records), sources)
    data.write_records(records, out_path)
