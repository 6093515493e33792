"""Input data: CounterFact records (`counterfact`) and the text corpora C is estimated on (`corpus`)."""

from .counterfact import (
                          COLUMNS,
                          LIST_COLUMNS,
                          OFFICIAL_URL,
                          STRING_COLUMNS,
                          CounterFactError,
                          default_sources,
                          load_counterfact,
                          read_records,
                          write_records,
)

__all__ = ["COLUMNS", "LIST_COLUMNS", "OFFICIAL_URL", "STRING_COLUMNS", "CounterFactError", "default_sources",
           "load_counterfact", "read_records", "write_records"]
