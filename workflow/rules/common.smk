# Paths and names derived from config, shared by every stage.
from editscale.models import slug

RESULTS = config.get("results", "results")
MODEL = slug(config["model"]["spec"])
SELECTION = f"n{config['data']['n']}-seed{config['data'].get('seed', 0)}"
MODEL_DIR = f"{RESULTS}/{MODEL}"
MODEL_MANIFEST = f"{MODEL_DIR}/model.yaml"
RECORDS = f"{RESULTS}/records/{SELECTION}.parquet"
