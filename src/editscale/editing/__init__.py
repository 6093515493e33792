"""Model plumbing for editing: C (`covariance`), keys, values, one batch of edits (`batches`) and
sequential runs (`sequential`). The ΔW themselves come from the pure `editscale.algorithms`."""

from .batches import (
                      BatchEdit,
                      EditConfig,
                      apply_delta,
                      check_conflicts,
                      edit_batch,
                      independent_batches,
                      prepare,
                      revert_delta,
)

__all__ = ["BatchEdit", "EditConfig", "apply_delta", "check_conflicts", "edit_batch", "independent_batches", "prepare",
           "revert_delta"]
