"""Rate limits on their own (`RateLimits.turn`): GCRA start times, FIFO, cancellation, memory.

Everything runs in virtual time, so start times are asserted exactly. Where the spacing
`per / rate` is a binary fraction (0.25, 0.5, 2, ...) the float times equal the real-number
GCRA times; otherwise a start may be a few float ulps late, never early, and the tests compare
against an exact (Fraction) reference model with a 1e-9 s allowance for lateness only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from fractions import Fraction

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

import trioflow
from trioflow._ratelimit import RateLimits

# -- a reference model: GCRA in exact arithmetic -----------------------------------------------


@attrs.define
class Model:
    """GCRA over exact rationals: start = max(arrival, TAT - tau); TAT = max(TAT, start) + T."""

    limit: trioflow.RateLimit
    tat: dict[Hashable, Fraction] = attrs.field(factory=dict)

    @property
    def interval(self) -> Fraction:
        return Fraction(self.limit.per) / Fraction(self.limit.rate)

    def due(self, arrival: float, key: Hashable = None) -> Fraction:
        """When a call arriving now may start (without taking the turn)."""
        tau = (self.limit.burst - 1) * self.interval
        tat = self.tat.get(key)
        return Fraction(arrival) if tat is None else max(Fraction(arrival), tat - tau)

    def take(self, arrival: float, key: Hashable = None) -> Fraction:
        start = self.due(arrival, key)
        self.tat[key] = max(self.tat.get(key, start), start) + self.interval
        return start


def max_in_window(starts: Sequence[float], per: float) -> int:
    """The most starts any half-open window [t, t + per) holds, in exact arithmetic."""
    exact = sorted(Fraction(s) for s in starts)
    width = Fraction(per)
    best = 0
    for i, t in enumerate(exact):
        best = max(best, sum(1 for s in exact[i:] if s < t + width))
    return best


def window_bound(limit: trioflow.RateLimit) -> int:
    return math.ceil(limit.rate) + limit.burst - 1


async def start_calls(
    nursery: trio.Nursery,
    rates: RateLimits,
    calls: Sequence[Hashable],
    starts: dict[int, float],
    name: str = "api",
    first: int = 0,
) -> None:
    """Start one task per call, in list order; each has asked for its turn when this returns."""

    async def call(i: int, key: Hashable, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()  # the task runs on into turn() before the parent resumes
        await rates.turn(name, key)
        starts[i] = trio.current_time()

    for i, key in enumerate(calls, start=first):
        await nursery.start(call, i, key)


# -- RateLimit: parameters -------------------------------------------------------------------


def test_rate_limit_is_public_frozen_and_keeps_its_parameters() -> None:
    limit = trioflow.RateLimit(10, per=2, burst=5)
    assert (limit.rate, limit.per, limit.burst) == (10.0, 2.0, 5)
    assert limit.interval == 0.2
    assert limit == trioflow.RateLimit(10.0, per=2.0, burst=5)
    assert trioflow.RateLimit.__module__ == "trioflow"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        limit.rate = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": math.inf}, "rate"),
        ({"rate": math.nan}, "rate"),
        ({"rate": "10"}, "rate"),
        ({"rate": True}, "rate"),
        ({"rate": None}, "rate"),
        ({"rate": 1, "per": 0}, "per"),
        ({"rate": 1, "per": -2.5}, "per"),
        ({"rate": 1, "per": math.inf}, "per"),
        ({"rate": 1, "burst": 0}, "burst"),
        ({"rate": 1, "burst": -3}, "burst"),
        ({"rate": 1, "burst": 2.0}, "burst"),
        ({"rate": 1, "burst": True}, "burst"),
        ({"rate": 1e-300, "per": 1e300}, "rate=1e-300, per"),
        ({"rate": 1e300, "per": 1e-300}, "rate=1e\\+300, per"),
    ],
)
def test_bad_parameters_are_a_config_error_naming_the_parameter(
    kwargs: dict[str, object], names: str
) -> None:
    with pytest.raises(trioflow.ConfigError, match=rf"RateLimit\({names}="):
        trioflow.RateLimit(**kwargs)  # type: ignore[arg-type]


def test_rate_limits_mapping_is_checked() -> None:
    with pytest.raises(trioflow.ConfigTypeError, match="mapping"):
        RateLimits.of([("api", trioflow.RateLimit(1))])  # type: ignore[arg-type]
    with pytest.raises(trioflow.ConfigError, match="non-empty strings"):
        RateLimits.of({"": trioflow.RateLimit(1)})
    with pytest.raises(trioflow.ConfigTypeError, match=r"rate_limits\['api'\].*RateLimit"):
        RateLimits.of({"api": 10})  # type: ignore[dict-item]


async def test_an_undefined_limit_is_a_bare_config_error_naming_it() -> None:
    rates = RateLimits.of({"api": trioflow.RateLimit(1)})
    rates.check("api")
    with pytest.raises(trioflow.ConfigError, match=r"no rate limit named 'db'.*\['api'\]"):
        rates.check("db")
    with pytest.raises(trioflow.ConfigError, match="'db'") as info:
        await rates.turn("db")
    assert type(info.value) is trioflow.ConfigError


async def test_an_unhashable_key_is_a_config_type_error() -> None:
    rates = RateLimits.of({"api": trioflow.RateLimit(1)})
    with pytest.raises(trioflow.ConfigTypeError, match="not hashable"):
        await rates.turn("api", ["a", "list"])  # type: ignore[arg-type]


# -- exact start times -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "per", "burst"),
    [(4, 1.0, 1), (2, 1.0, 3), (1, 0.5, 2), (8, 2.0, 5), (0.5, 1.0, 1), (3, 0.75, 4)],
)
async def test_n_calls_at_once_start_at_the_gcra_times(
    autojump_clock: trio.testing.MockClock, rate: float, per: float, burst: int
) -> None:
    limit = trioflow.RateLimit(rate, per=per, burst=burst)
    rates = RateLimits.of({"api": limit})
    n = 12
    starts: dict[int, float] = {}
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await start_calls(nursery, rates, [None] * n, starts)
    spacing = per / rate  # a binary fraction here, so the float times are exact
    expected = [max(0, k - burst + 1) * spacing for k in range(n)]
    assert [starts[i] for i in range(n)] == expected
    assert max_in_window(list(starts.values()), per) <= window_bound(limit)


async def test_turn_returns_the_seconds_waited(autojump_clock: trio.testing.MockClock) -> None:
    rates = RateLimits.of({"api": trioflow.RateLimit(2, burst=2)})
    with trio.fail_after(100):
        waited = [await rates.turn("api") for _ in range(4)]
        assert waited == [0.0, 0.0, 0.5, 0.5]
        await trio.sleep(10)  # the bucket refills completely
        assert [await rates.turn("api") for _ in range(3)] == [0.0, 0.0, 0.5]
    assert trio.current_time() == 11.5


async def test_spread_arrivals_start_when_gcra_says(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = trioflow.RateLimit(4, per=1.0, burst=3)
    arrivals = [0, 0, 0, 0, 0.1, 0.3, 2.0, 2.0, 2.0, 2.0, 2.0, 5.5, 5.5]
    rates = RateLimits.of({"api": limit})
    starts: dict[int, float] = {}
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for i, at in enumerate(arrivals):
                await trio.sleep_until(at)
                await start_calls(nursery, rates, [None], starts, first=i)
    model = Model(limit)
    expected = [float(model.take(a)) for a in arrivals]
    assert [starts[i] for i in range(len(arrivals))] == expected
    # written out: a burst of three, then every quarter second; refilled by t=2 and t=5.5
    assert expected == [0, 0, 0, 0.25, 0.5, 0.75, 2, 2, 2, 2.25, 2.5, 5.5, 5.5]


async def test_keys_have_their_own_buckets(autojump_clock: trio.testing.MockClock) -> None:
    rates = RateLimits.of({"host": trioflow.RateLimit(1, per=2.0)})
    keys = ["a", "b", "c", "a", "b", "a", "c", "a"]
    starts: dict[int, float] = {}
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await start_calls(nursery, rates, keys, starts, name="host")
    by_key: dict[str, list[float]] = {}
    for i, key in enumerate(keys):
        by_key.setdefault(key, []).append(starts[i])
    assert by_key == {"a": [0, 2, 4, 6], "b": [0, 2], "c": [0, 2]}


async def test_limits_do_not_share_buckets_but_tools_and_runs_do(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared = RateLimits.of({"api": trioflow.RateLimit(1), "db": trioflow.RateLimit(1)})
    run_a = shared.overlay({"mine": trioflow.RateLimit(1)})
    run_b = shared.overlay(None)
    assert run_b is shared
    with trio.fail_after(10):
        assert await run_a.turn("api") == 0
        assert await run_b.turn("api") == 1  # same bucket, through another run's view
        assert await run_a.turn("db") == 0  # another limit, another bucket
        assert await run_a.turn("mine") == 0
    with pytest.raises(trioflow.ConfigError, match="'mine'"):
        run_b.check("mine")


async def test_a_run_limit_hides_the_runtime_limit_of_the_same_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runtime = RateLimits.of({"api": trioflow.RateLimit(1)})
    run = runtime.overlay({"api": trioflow.RateLimit(4)})
    assert run.get("api") == trioflow.RateLimit(4)
    assert run.names() == ["api"]
    with trio.fail_after(10):
        assert [await run.turn("api") for _ in range(3)] == [0, 0.25, 0.25]
        assert await runtime.turn("api") == 0  # the runtime's own bucket was not touched


# -- first come, first served; cancellation ---------------------------------------------------


async def test_waiters_are_served_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rates = RateLimits.of({"api": trioflow.RateLimit(1)})
    order: list[int] = []

    async def call(i: int) -> None:
        await rates.turn("api")
        order.append(i)

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                await nursery.start(_started_then, call, i)
    assert order == list(range(20))
    assert trio.current_time() == 19


async def _started_then(
    fn: object, i: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    task_status.started()
    await fn(i)  # type: ignore[operator]


async def test_a_cancelled_waiter_consumes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rates = RateLimits.of({"api": trioflow.RateLimit(1)})
    starts: dict[str, float] = {}
    scopes: dict[str, trio.CancelScope] = {}

    async def call(name: str, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            scopes[name] = scope
            task_status.started()
            await rates.turn("api")
            starts[name] = trio.current_time()

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for name in ["first", "head", "middle", "last"]:
                await nursery.start(call, name)
            await trio.sleep(0.5)
            scopes["middle"].cancel()  # waiting behind the head
            scopes["head"].cancel()  # the one sleeping until t=1
    # "last" takes the turn the head would have had: nothing was consumed by the two.
    assert starts == {"first": 0, "last": 1}


async def test_cancelling_the_sleeping_head_lets_the_next_start_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rates = RateLimits.of({"api": trioflow.RateLimit(1, per=4.0, burst=2)})
    starts: dict[str, float] = {}
    with trio.fail_after(100):
        assert await rates.turn("api") == 0
        assert await rates.turn("api") == 0
        async with trio.open_nursery() as nursery:

            async def head() -> None:
                with trio.move_on_after(3):  # due at t=4, gives up at t=3
                    await rates.turn("api")
                    starts["head"] = trio.current_time()

            async def behind(*, task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                await rates.turn("api")
                starts["behind"] = trio.current_time()

            nursery.start_soon(head)
            await trio.sleep(1)
            await nursery.start(behind)
    assert starts == {"behind": 4}


async def test_a_call_cancelled_before_asking_takes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rates = RateLimits.of({"api": trioflow.RateLimit(1)})
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            scope.cancel()
            await rates.turn("api")
        assert scope.cancelled_caught
        assert await rates.turn("api") == 0  # the cancelled call left the bucket full


# -- memory ------------------------------------------------------------------------------------


async def test_a_million_distinct_keys_keep_the_bucket_table_small(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 1,000,000 calls, each with a new key, 1,000 a virtual second for 1,000 s. A bucket stays
    # busy for one interval (0.1 s) after its call, so ~100 are in use at any time. The calls
    # take their turn with take_nowait (turn() without its checkpoint: the same bucket code,
    # several times faster); one in a hundred goes through turn() itself.
    rates = RateLimits.of({"api": trioflow.RateLimit(10)})
    take = rates.take_nowait
    largest = taken = waited = 0.0
    with trio.fail_after(10_000):
        for batch in range(0, 1_000_000, 100):
            waited += await rates.turn("api", batch)
            for i in range(batch + 1, batch + 100):
                taken += take("api", i)
            largest = max(largest, rates.bucket_count("api"))
            await trio.sleep(0.1)
        assert (taken, waited) == (990_000, 0)  # every key new: nobody waited
        assert trio.current_time() == pytest.approx(1000)
        assert rates.take_nowait("api", "new")
        assert not rates.take_nowait("api", "new")  # a busy bucket is kept, not reset
    assert 100 <= largest <= 250


async def test_busy_buckets_are_kept_while_idle_ones_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rates = RateLimits.of({"api": trioflow.RateLimit(1, per=100.0)})
    with trio.fail_after(1000):
        await rates.turn("api", "slow")  # busy until t=100
        for i in range(1000):
            await rates.turn("api", i)  # each busy for 100 s too
        assert rates.bucket_count("api") == 1001  # nothing idle yet
        await trio.sleep(100)
        for i in range(1000, 2000):
            await rates.turn("api", i)
        # the first thousand were dropped as the second came; the table did not double
        assert rates.bucket_count("api") <= 1002
        assert await rates.turn("api", 1999) == 100  # a busy bucket was kept, not reset


# -- the property ------------------------------------------------------------------------------

# A bucket's spacing is per/rate; binary fractions give exact float times, others do not.
rates_st = st.sampled_from([0.5, 1, 2, 4, 8]) | st.floats(0.2, 20, allow_nan=False)
pers_st = st.sampled_from([0.5, 1.0, 2.0]) | st.floats(0.1, 5, allow_nan=False)


@st.composite
def schedules(draw: st.DrawFn) -> tuple[trioflow.RateLimit, list[tuple[float, int, float | None]]]:
    limit = trioflow.RateLimit(draw(rates_st), per=draw(pers_st), burst=draw(st.integers(1, 4)))
    calls = draw(
        st.lists(
            st.tuples(
                st.integers(0, 80).map(lambda q: q / 8),  # arrival, with many ties
                st.integers(0, 2),  # key
                st.none() | st.integers(1, 40).map(lambda q: q / 8),  # gives up after
            ),
            max_size=40,
        )
    )
    return limit, calls


@given(case=schedules())
def test_any_schedule_keeps_the_window_and_waits_no_longer_than_gcra(
    case: tuple[trioflow.RateLimit, list[tuple[float, int, float | None]]],
) -> None:
    limit, calls = case
    order: list[int] = []
    starts: dict[int, float] = {}
    gave_up: set[int] = set()

    async def main() -> None:
        rates = RateLimits.of({"api": limit})

        async def call(i: int, at: float, key: int, patience: float | None) -> None:
            await trio.sleep_until(at)
            with trio.move_on_at(math.inf if patience is None else at + patience):
                order.append(i)
                await rates.turn("api", key)
                starts[i] = trio.current_time()
                return
            gave_up.add(i)

        with trio.fail_after(100_000):
            async with trio.open_nursery() as nursery:
                for i, (at, key, patience) in enumerate(calls):
                    nursery.start_soon(call, i, at, key, patience)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    assert sorted(order) == list(range(len(calls)))
    slack = Fraction(1, 10**9)  # float rounding makes a start late by ulps, never early
    model = Model(limit)
    for i in order:  # first come, first served: the order the calls asked in
        at, key, patience = calls[i]
        due = model.due(at, key)
        if i in gave_up:
            # It gave up before its turn came (a tie at the very instant may go either way).
            assert patience is not None and due >= Fraction(at + patience) - slack
            continue  # and it consumed nothing
        start = model.take(at, key)
        assert start <= Fraction(starts[i]) <= start + slack, (i, float(start), starts[i])
        if patience is not None:
            assert start <= Fraction(at + patience) + slack
    for key in {key for _, key, _ in calls}:
        mine = [starts[i] for i in starts if calls[i][1] == key]
        assert max_in_window(mine, limit.per) <= window_bound(limit)
