"""Each setting's domain, declared once beside its default (`settings.py`: `setting(default, Domain(...))`)
and enforced from that one declaration at every entry point: the config (whose schema must agree:
tests/test_config.py), algorithm variants, the `Editor`'s and `editscale.downstream`'s keywords and
the command line's flags. An error names the entry point's own spelling of the setting, the value
and the domain:

    edit.nullspace_threshold = -1 is not a finite number ≥ 0
    algorithm variant 'alphaedit@nullspace_threshold=-1': nullspace_threshold = -1.0 is not a finite number ≥ 0
    --n-tests -3 is not an integer ≥ 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Domain:
    kind: str = "number"  # number (finite int or float), integer, string or boolean
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()

    def describe(self) -> str:
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        bounds = [f"> {self.exclusive_minimum:g}" if self.exclusive_minimum is not None else "",
                  f"≥ {self.minimum:g}" if self.minimum is not None else "",
                  f"≤ {self.maximum:g}" if self.maximum is not None else ""]
        what = {"number": "a finite number", "integer": "an integer", "string": "a string",
                "boolean": "true or false"}[self.kind]
        return " ".join([what, " and ".join(b for b in bounds if b)]).strip()

    def holds(self, value) -> bool:
        if self.kind == "boolean":
            return isinstance(value, bool)
        if self.kind == "string":
            return isinstance(value, str) and (not self.choices or value in self.choices)
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "integer" else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        return ((self.minimum is None or value >= self.minimum)
                and (self.exclusive_minimum is None or value > self.exclusive_minimum)
                and (self.maximum is None or value <= self.maximum))

    def schema(self) -> dict:
        """This domain as the config schema writes it (JSON Schema)."""
        out = {"type": self.kind}
        for key, bound in (("minimum", self.minimum), ("exclusiveMinimum", self.exclusive_minimum),
                           ("maximum", self.maximum)):
            if bound is not None:
                out[key] = bound
        if self.choices:
            out["enum"] = list(self.choices)
        return out


def of(section, name: str) -> Domain | None:
    """The domain declared for field `name` of a settings dataclass (or instance), if any."""
    return next((f.metadata.get("domain") for f in fields(section) if f.name == name), None)


def check(spelling: str, value, domain: Domain | None, *, joiner: str = " = ") -> None:
    """ValueError naming `spelling`, the value and the domain when `value` is outside it."""
    if domain is not None and not domain.holds(value):
        raise ValueError(f"{spelling}{joiner}{value!r} is not {domain.describe()}")


def problems(section, prefix: str) -> list[str]:
    """Every field of a settings instance outside its declared domain, spelt `<prefix>.<field>`."""
    found = []
    for f in fields(section):
        try:
            check(f"{prefix}.{f.name}", getattr(section, f.name), f.metadata.get("domain"))
        except ValueError as error:
            found.append(str(error))
    return found
