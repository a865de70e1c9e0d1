"""Rate limits: how many calls may *start* per period, per key (GCRA).

Each bucket keeps one number, its theoretical arrival time (TAT). A call may start at `now` when
`now >= TAT - tau`, where `T = per / rate` is the spacing of starts and `tau = (burst - 1) * T`
the slack that allows a burst; starting moves `TAT` to `max(TAT, now) + T`. That is O(1) per
call, with no background task and no polling: only the first waiter of a bucket sleeps (until
its own start time), and it hands over to the next when it starts or is cancelled, so waiters
are served first come, first served and a cancelled waiter consumes nothing.

A bucket is idle when it would allow a full burst (`TAT <= now`) and nobody waits on it; an
idle bucket is indistinguishable from a new one, so it is dropped: every call looks at two
buckets of its limit and drops them if idle, which keeps the table bounded by the keys in use.

Times are floats. The additions that move a TAT round *up* (never down), so that the window
guarantee (no `[t, t + per)` holds more than `ceil(rate) + burst - 1` starts of one bucket)
holds exactly, not merely up to rounding.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._errors import ConfigError, ConfigTypeError

if TYPE_CHECKING:
    from ._tool import InputSpec, Tool

__all__ = ["RateLimit", "RateLimits", "check_rate_key", "rate_key_of"]

# How many buckets each call inspects for idleness; more than the one bucket a call can add,
# so idle buckets are dropped faster than new ones appear.
_SWEEP = 2


def _positive_finite(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(
            f"RateLimit({name}=...) must be a finite number > 0, got {value!r}; "
            "e.g. RateLimit(10, per=1.0) for ten starts a second"
        )
    return float(value)


def _check_rate(value: object) -> float:
    return _positive_finite(value, "rate")


def _check_per(value: object) -> float:
    return _positive_finite(value, "per")


def _check_burst(_: object, __: object, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"RateLimit(burst=...) must be an int >= 1 (how many calls may start back to "
            f"back), got {value!r}"
        )


@attrs.frozen
class RateLimit:
    """At most `rate` starts per `per` seconds, up to `burst` of them back to back.

    Starts are spaced `per / rate` seconds apart once a burst is used up (GCRA). Define limits
    by name with `open_runtime(rate_limits={"api": RateLimit(10, burst=5)})` or `run(...,
    rate_limits=...)`; a tool takes a turn with `@tool(rate_limit="api")`.
    """

    rate: float = attrs.field(converter=_check_rate)
    per: float = attrs.field(default=1.0, converter=_check_per)
    burst: int = attrs.field(default=1, validator=_check_burst)

    def __attrs_post_init__(self) -> None:
        spacing = self.per / self.rate
        if not (0 < spacing < math.inf):
            raise ConfigError(
                f"RateLimit(rate={self.rate!r}, per={self.per!r}): per / rate = {spacing!r} "
                "seconds between starts is out of range; use numbers of a sensible size"
            )

    @property
    def interval(self) -> float:
        """Seconds between starts once the burst is used up (`per / rate`)."""
        return self.per / self.rate


RateLimit.__module__ = "trioflow"


def _add_up(a: float, b: float) -> float:
    """`a + b`, rounded towards +inf instead of to nearest (TwoSum gives the exact error)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return math.nextafter(s, math.inf) if err > 0 else s


def _spacing(limit: RateLimit) -> tuple[float, float]:
    """`T` rounded up and `tau = (burst - 1) * T` rounded down, so limits never loosen."""
    exact = Fraction(limit.per) / Fraction(limit.rate)
    t = float(exact)
    if Fraction(t) < exact:
        t = math.nextafter(t, math.inf)
    tau_exact = (limit.burst - 1) * Fraction(t)
    try:
        tau = float(tau_exact)
    except OverflowError:  # a burst beyond any float: never limits
        return t, sys.float_info.max
    if Fraction(tau) > tau_exact:
        tau = math.nextafter(tau, 0.0)
    return t, tau


class _Waiter:
    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = trio.Event()


class _Bucket:
    """One key's state: its TAT and the calls waiting for a turn, in arrival order."""

    __slots__ = ("tat", "waiters")

    def __init__(self, tat: float) -> None:
        self.tat = tat
        # Insertion-ordered, O(1) removal from anywhere (cancellation) and from the front.
        self.waiters: OrderedDict[_Waiter, None] | None = None


class _Limit:
    """The buckets of one named rate limit, by key."""

    __slots__ = ("buckets", "interval", "limit", "name", "tau")

    def __init__(self, name: str, limit: RateLimit) -> None:
        self.name = name
        self.limit = limit
        self.interval, self.tau = _spacing(limit)
        self.buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def _sweep(self, now: float) -> None:
        # Look at the oldest buckets: drop the idle ones, send the busy ones to the back.
        buckets = self.buckets
        for _ in range(_SWEEP):
            if not buckets:
                return
            key = next(iter(buckets))
            bucket = buckets[key]
            if bucket.waiters or bucket.tat > now:
                buckets.move_to_end(key)
            else:
                del buckets[key]

    def _unhashable(self, key: object) -> ConfigTypeError:
        return ConfigTypeError(
            f"rate limit {self.name!r}: the key {key!r} is not hashable; "
            "rate_key must return a hashable value such as a str or a tuple"
        )

    def _start(self, bucket: _Bucket, now: float) -> None:
        bucket.tat = _add_up(max(bucket.tat, now), self.interval)

    def _allowed_at(self, bucket: _Bucket) -> float:
        return _add_up(bucket.tat, -self.tau)

    def _take(self, key: Hashable, now: float) -> _Bucket | None:
        """Start now if the bucket allows it and nobody waits on it (None); else the bucket."""
        buckets = self.buckets
        if buckets:
            self._sweep(now)
        try:
            bucket = buckets.get(key)
        except TypeError:
            raise self._unhashable(key) from None
        if bucket is None:  # new, or dropped when idle: the same thing
            buckets[key] = _Bucket(_add_up(now, self.interval))
            return None
        tat = bucket.tat
        if bucket.waiters or (tat > now and now < _add_up(tat, -self.tau)):
            return bucket
        bucket.tat = _add_up(tat if tat > now else now, self.interval)
        return None

    def take_nowait(self, key: Hashable) -> bool:
        """Start now if the bucket `key` allows it; False (and nothing taken) otherwise."""
        return self._take(key, trio.current_time()) is None

    async def turn(self, key: Hashable) -> float:
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        bucket = self._take(key, now)
        if bucket is None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return 0.0
        return await self._wait(bucket, now)

    async def _wait(self, bucket: _Bucket, arrived: float) -> float:
        if bucket.waiters is None:
            bucket.waiters = OrderedDict()
        waiters = bucket.waiters
        me = _Waiter()
        waiters[me] = None
        try:
            if next(iter(waiters)) is not me:
                await me.wake.wait()  # set when everyone ahead has started or left
            # Only the first waiter sleeps, and the TAT changes only when it starts, so its
            # start time stays fixed while it sleeps.
            allowed = self._allowed_at(bucket)
            if trio.current_time() < allowed:
                await trio.sleep_until(allowed)
            now = trio.current_time()
            self._start(bucket, now)
        finally:
            # Started or cancelled, leave the line; if it was our turn, hand it on.
            first = next(iter(waiters)) is me
            del waiters[me]
            if first and waiters:
                next(iter(waiters)).wake.set()
        return now - arrived


@attrs.define(eq=False)
class RateLimits:
    """The named rate limits of a runtime (and of one run, on top of it) and their buckets.

    `turn(name, key)` waits until the bucket `key` of the limit `name` allows a start and
    returns the seconds waited. Buckets are shared by every call naming the limit.
    """

    _limits: dict[str, _Limit] = attrs.field(alias="limits")
    _parent: RateLimits | None = attrs.field(default=None, alias="parent")

    @classmethod
    def of(
        cls, limits: Mapping[str, RateLimit] | None, parent: RateLimits | None = None
    ) -> RateLimits:
        """Build from `{name: RateLimit}` (checked); names here hide the parent's."""
        if limits is None:
            limits = {}
        if not isinstance(limits, Mapping):
            raise ConfigTypeError(
                "rate_limits must be a mapping like {'api': trioflow.RateLimit(10)}, "
                f"got {limits!r}"
            )
        checked: dict[str, _Limit] = {}
        for name, limit in limits.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"rate_limits keys must be non-empty strings, got {name!r}")
            if not isinstance(limit, RateLimit):
                raise ConfigTypeError(
                    f"rate_limits[{name!r}] must be a trioflow.RateLimit, got {limit!r}; "
                    f"write trioflow.RateLimit(rate, per=..., burst=...)"
                )
            checked[name] = _Limit(name, limit)
        return cls(limits=checked, parent=parent)

    def overlay(self, limits: Mapping[str, RateLimit] | None) -> RateLimits:
        """These limits plus a run's own `rate_limits=` (a run's name hides the runtime's)."""
        if limits is None:
            return self
        rates = RateLimits.of(limits, parent=self)
        return rates if rates._limits else self

    def names(self) -> list[str]:
        """Every defined name, sorted."""
        names = set(self._limits)
        if self._parent is not None:
            names.update(self._parent.names())
        return sorted(names)

    def get(self, name: str) -> RateLimit | None:
        """The `RateLimit` defined as `name`, or None."""
        found = self._find(name)
        return None if found is None else found.limit

    def _find(self, name: str) -> _Limit | None:
        rates: RateLimits | None = self
        while rates is not None:
            found = rates._limits.get(name)
            if found is not None:
                return found
            rates = rates._parent
        return None

    def _limit(self, name: str) -> _Limit:
        found = self._find(name)
        if found is None:
            raise self._undefined(name)
        return found

    def check(self, name: str) -> None:
        """Raise `ConfigError` if `name` is not defined."""
        if self._find(name) is None:
            raise self._undefined(name)

    def _undefined(self, name: str) -> ConfigError:
        return ConfigError(
            f"no rate limit named {name!r}; defined: {self.names() or 'none'}; define it with "
            f"open_runtime(rate_limits={{{name!r}: trioflow.RateLimit(...)}}) or "
            f"run(..., rate_limits={{{name!r}: ...}})"
        )

    async def turn(self, name: str, key: Hashable = None) -> float:
        """Wait for a turn in the bucket `key` of the limit `name`; returns seconds waited.

        Cancelled while waiting, it consumes nothing and the next waiter moves up.
        """
        return await self._limit(name).turn(key)

    def take_nowait(self, name: str, key: Hashable = None) -> bool:
        """Take a turn if one is free right now (nobody waiting, bucket allows); else False."""
        return self._limit(name).take_nowait(key)

    def bucket_count(self, name: str) -> int:
        """How many buckets the limit `name` holds now (idle ones are dropped as calls come)."""
        return len(self._limit(name).buckets)


# -- rate_key ------------------------------------------------------------------------------------


def check_rate_key(tool: str, rate_key: Callable[..., Hashable], spec: InputSpec) -> None:
    """At decoration: `rate_key` must accept the tool's inputs as keywords (all of them)."""
    try:
        signature = inspect.signature(rate_key)
    except (TypeError, ValueError):  # a builtin without a signature: found out at call time
        return
    try:
        signature.bind(**dict.fromkeys(spec.params))
    except TypeError as exc:
        names = list(spec.signature.parameters)
        like = f"lambda {names[0]}, **_: ..." if names else "lambda **_: ..."
        raise ConfigTypeError(
            f"tool {tool!r}: rate_key is called with every input of the tool as a keyword "
            f"({', '.join(names)}) and cannot take them: {exc}; write e.g. rate_key={like}"
        ) from None


def rate_key_of(tool: Tool, inputs: Mapping[str, Any]) -> Hashable:
    """The bucket key of one call: `tool.rate_key` given the tool's keyword arguments
    (defaults filled in, no context); it must be hashable."""
    assert tool.rate_key is not None
    kwargs = dict(inputs)
    for name, param in tool.spec.signature.parameters.items():
        if name not in kwargs and param.default is not inspect.Parameter.empty:
            kwargs[name] = param.default
    key = tool.rate_key(**kwargs)
    try:
        hash(key)
    except TypeError:
        raise ConfigTypeError(
            f"tool {tool.name!r}: rate_key returned {key!r}, which is not hashable; "
            "return a str, a number or a tuple"
        ) from None
    return key
