"""Model plumbing for editing: C (`covariance`), keys, values, one batch of edits at a layer or a
window of layers (`window`), independent batches (`batches`) and sequential runs (`sequential`).
The ΔW themselves come from the pure `editscale.algorithms`."""

from .batches import (
                      BatchEdit,
                      EditConfig,
                      apply_delta,
                      batch_slices,
                      check_conflicts,
                      independent_batches,
                      prepare,
                      put_weights,
                      restored,
                      revert_delta,
                      weights,
)
from .window import edit_batch, edit_window

__all__ = ["BatchEdit", "EditConfig", "apply_delta", "batch_slices", "check_conflicts", "edit_batch", "edit_window",
           "independent_batches", "prepare", "put_weights", "restored", "revert_delta", "weights"]
