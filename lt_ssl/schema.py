"""The base of every typed config section: frozen, strict, unknown keys refused (pydantic v2)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict


def _yaml_number(value: Any) -> Any:
    # PyYAML reads 1e-5 (no dot) as a string; strict mode would refuse it, a person would not expect that.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# A float field: ints and YAML's dot-less scientific notation are accepted, booleans are not.
Float = Annotated[float, BeforeValidator(_yaml_number)]


class Section(BaseModel):
    """strict: `cluster.k=true` or `epochs: "3"` is an error, not a silent 1 or 3."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
