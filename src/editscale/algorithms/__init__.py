"""Closed-form edits of one MLP output projection W (d_out, d_in): pure functions of tensors.

Nothing here knows about models, hooks or files. `registry.ALGORITHMS` names each algorithm once:
the settings it reads, its operator T on keys, its ridge ρ and whether it keeps earlier keys;
`prepared` solves them all through one family (see its docstring), and `dense` keeps each as its
textbook d_in × d_in formula, the plain path the fast one is tested against.
"""

from .conditioning import MAX_CONDITION, IllConditionedError
from .prepared import KeyMemory, Prepared, Solved, prepare
from .registry import ADDONS, ALGORITHMS, Addon, Algorithm, get, variant, variant_name

__all__ = ["ADDONS", "ALGORITHMS", "Addon", "Algorithm", "IllConditionedError", "KeyMemory", "MAX_CONDITION", "Prepared", "Solved",
           "get", "prepare", "variant", "variant_name"]
