"""Rate limits: how many calls may *start* per unit of time, per key (GCRA).

A spec only so far; the buckets that enforce it plug into the run's rate seam.
"""

from __future__ import annotations

import math

import attrs

from ._errors import ConfigError

__all__ = ["RateLimit"]


def _positive_finite(_: object, attribute: attrs.Attribute[float], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(
            f"RateLimit({attribute.name}=...) must be a finite number > 0, got {value!r}"
        )


def _burst(_: object, __: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"RateLimit(burst=...) must be an int >= 1, got {value!r}")


@attrs.frozen
class RateLimit:
    """Up to `burst` calls may start back to back, then starts are `per / rate` seconds apart."""

    rate: float = attrs.field(validator=_positive_finite)
    per: float = attrs.field(default=1.0, validator=_positive_finite)
    burst: int = attrs.field(default=1, validator=_burst)
