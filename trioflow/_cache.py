"""`trioflow.Cache`: how a tool's outputs are reused across runs (see the durable runs docs).

A spec only; the run store keeps the outputs and looks them up.
"""

from __future__ import annotations

from datetime import timedelta

import attrs

from ._errors import ConfigError, ConfigTypeError

__all__ = ["Cache"]


def _check_expire(_: object, __: object, value: float | timedelta | None) -> None:
    if value is None or isinstance(value, timedelta):
        if isinstance(value, timedelta) and value.total_seconds() <= 0:
            raise ConfigError(f"Cache(expire=...) must be positive, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(
            f"Cache(expire=...) must be seconds > 0, a timedelta or None, got {value!r}"
        )


def _check_version(_: object, __: object, value: str | None) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigTypeError(f"Cache(version=...) must be a string or None, got {value!r}")


@attrs.frozen
class Cache:
    """Reuse a tool's stored outputs when its name, version and argument values are the same.

    `expire` is seconds (or a `timedelta`) on the wall clock from when the output was stored;
    None keeps it forever. `version` replaces the default version, a hash of the tool's source.
    """

    expire: float | timedelta | None = attrs.field(default=None, validator=_check_expire)
    version: str | None = attrs.field(default=None, validator=_check_version)
