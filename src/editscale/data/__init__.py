"""Input data: datasets as a registry of loaders into one neutral record (`registry`, `records`),
CounterFact and zsRE (`counterfact`, `zsre`), and the text corpora C is estimated on (`corpus`)."""

from .counterfact import OFFICIAL_URL, CounterFactError, default_sources, load_counterfact
from .records import COLUMNS, LIST_COLUMNS, STRING_COLUMNS, RecordError, read_records, write_records
from .registry import DATASETS, Dataset

__all__ = ["COLUMNS", "DATASETS", "LIST_COLUMNS", "OFFICIAL_URL", "STRING_COLUMNS", "CounterFactError", "Dataset",
           "RecordError", "default_sources", "load_counterfact", "read_records", "write_records"]
