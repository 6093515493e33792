"""A value file: the keys, v* and residuals of a range of records at one layer on the unedited
model, and how each v* was optimised, one row per record in record order. This type owns the
format; the values stage writes it and every experiment that edits the unedited model reads it.

    case_id (n,)  keys (n, d_in)  v_star, residual (n, d_out)  loss (n,)  steps (n,)  converged (n,)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editscale import artifacts
from editscale.editing.values import Values


@dataclass
class ValueFile:
    case_id: torch.Tensor  # (n,)
    keys: torch.Tensor  # (n, d_in) at the layer
    values: Values

    def write(self, path, metadata: dict | None = None) -> None:
        fields = {name: getattr(self.values, name) for name in Values.__dataclass_fields__}
        artifacts.write_safetensors({"case_id": self.case_id, "keys": self.keys, **fields}, path, metadata=metadata)

    @staticmethod
    def read(paths: list) -> "ValueFile":
        """Value files (or the chunks of one) joined in the order given, i.e. record order."""
        parts = [artifacts.read_tensors(p) for p in paths]
        joined = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        return ValueFile(joined["case_id"], joined["keys"],
                         Values(*(joined[name] for name in Values.__dataclass_fields__)))

    @staticmethod
    def for_records(paths: list, case_ids, where) -> "ValueFile":
        """The rows of exactly `case_ids` (the first records of the selection `where`), in their
        order; an error naming the files and the fix when the files hold other records."""
        read = ValueFile.read(paths)
        n = len(case_ids)
        ids = torch.as_tensor(list(case_ids))
        if len(read.case_id) < n or not torch.equal(read.case_id[:n], ids.to(read.case_id.dtype)):
            raise ValueError(f"value files {list(map(str, paths))} do not match the records in {where}; rerun the "
                             f"values rule")
        return read[:n]

    def __getitem__(self, rows: slice) -> "ValueFile":
        """The records `rows` (a slice), e.g. one batch's."""
        return ValueFile(self.case_id[rows], self.keys[rows],
                         Values(*(getattr(self.values, name)[rows] for name in Values.__dataclass_fields__)))

    def __len__(self) -> int:
        return len(self.case_id)
