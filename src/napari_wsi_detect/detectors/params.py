"""The parameter schema: every number a user sets, declared once per detector.

A `Param` has one `key` used everywhere: the Python API keyword, the CLI flag
(`--opening-um`), the widget control, summary.json's "parameters" and a model file's
"thresholds" (model-file values override the schema defaults). `stage` says what a change
costs: "run" parameters change the numbers in the heatmap (a new run, a new store);
"post" parameters only re-run post-processing on the stored map (sliders).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import WsiDetectError

# Old model files wrote the detection threshold as "probability"; it has one name now.
LEGACY_KEYS = {"probability": "threshold"}


class ParamError(WsiDetectError):
    """A parameter value is missing, not a number, or outside its range."""


@dataclass(frozen=True)
class Param:
    key: str
    label: str
    default: float | str
    minimum: float
    maximum: float
    step: float = 1.0
    unit: str = ""
    decimals: int = 2
    help: str = ""
    stage: str = "post"  # "run" | "post"
    # A fixed set: numbers (alpha) or names (stain_normalisation); empty = a range.
    choices: tuple[int | str, ...] = field(default=())
    integer: bool = False

    @property
    def named(self) -> bool:
        """Whether the choices are names (the value is a string, not a number)."""
        return bool(self.choices) and isinstance(self.choices[0], str)

    def format(self, value: Any) -> str:
        """`value` as the CLI and the messages show it."""
        return str(value) if self.named else f"{value:g}"

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.minimum:g}–{self.maximum:g}{unit}"

    def validate(self, value: Any) -> float | int | str:
        """`value` as a number (or name) of this parameter, or ParamError naming the
        valid range."""
        if self.named:
            name = str(value).strip().lower() if isinstance(value, str) else value
            if name not in self.choices:
                raise ParamError(f"{self.key} must be {self.describe_range()}, got {value!r}")
            return name
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ParamError(
                f"{self.key} must be a number ({self.describe_range()}), got {value!r}"
            ) from None
        if not math.isfinite(number):
            raise ParamError(f"{self.key} must be finite ({self.describe_range()}), got {value!r}")
        if self.choices:
            if number not in self.choices:
                raise ParamError(f"{self.key} must be {self.describe_range()}, got {value!r}")
            return int(number)
        if not self.minimum <= number <= self.maximum:
            raise ParamError(f"{self.key} must be in {self.describe_range()}, got {value!r}")
        if self.integer:
            if number != int(number):
                raise ParamError(f"{self.key} must be a whole number, got {value!r}")
            return int(number)
        return number

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "default": self.default,
                "minimum": self.minimum, "maximum": self.maximum, "step": self.step,
                "unit": self.unit, "stage": self.stage, "choices": list(self.choices),
                "help": self.help}


def canonical_keys(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """`values` with legacy names mapped to today's (a model file's "probability" is the
    "threshold"); a value under today's name wins over a legacy one."""
    out: dict[str, Any] = {}
    for key, value in (values or {}).items():
        new = LEGACY_KEYS.get(key)
        if new is not None:
            out.setdefault(new, value)
        else:
            out[key] = value
    return out


def resolve(params: Iterable[Param], model_defaults: Mapping[str, Any] | None = None,
            given: Mapping[str, Any] | None = None) -> dict[str, float | int | str]:
    """Values for `params`: schema default < model-file default < `given` (None = unset).
    Every value is validated; an unknown key in `given` is an error (a typo must not be
    silently ignored)."""
    params = list(params)
    known = {p.key for p in params}
    model_defaults = canonical_keys(model_defaults)
    given = canonical_keys({k: v for k, v in (given or {}).items() if v is not None})
    unknown = sorted(set(given) - known)
    if unknown:
        raise ParamError(f"unknown parameter(s) {', '.join(unknown)}; this detector takes "
                         f"{', '.join(sorted(known))}")
    out: dict[str, float | int | str] = {}
    for p in params:
        if p.key in given:
            out[p.key] = p.validate(given[p.key])
        elif p.key in model_defaults:
            try:
                out[p.key] = p.validate(model_defaults[p.key])
            except ParamError as exc:
                raise ParamError(f"the model file's default {exc}") from None
        else:
            out[p.key] = p.validate(p.default)
    return out
