"""Durable runs: a run that fails half-way, resumed; a graph_fn replayed; a cached tool."""

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import attrs

import trioflow

ran: list[str] = []  # which tool bodies really ran, to show what resume skips
flaky = {"fail": True}


@attrs.frozen
class Report:  # outputs may be attrs classes, dataclasses, enums, datetimes, containers
    city: str
    celsius: float
    at: dt.datetime


@trioflow.tool(outputs=["report"])
async def measure(city: str) -> Report:
    ran.append(city)
    if city == "Oslo" and flaky["fail"]:
        raise ConnectionError("sensor offline")
    celsius = {"Lisbon": 17.5, "Oslo": 4.5, "Rome": 21.0}[city]
    return Report(city, celsius, dt.datetime(2026, 12, 3, tzinfo=dt.UTC))


@trioflow.tool(outputs=["warmest"])
async def warmest(reports: list[Report]) -> str:
    ran.append("warmest")
    return max(reports, key=lambda r: r.celsius).city


@trioflow.graphify(outputs=["warmest"])
def weather(cities: list[str]) -> dict[str, Any]:
    reports = [measure(city=c) for c in cities]
    return {"warmest": warmest(reports=[r.report for r in reports]).warmest}


@trioflow.graph_fn(outputs=["warmest"])
async def weather_fn(cities: list[str]) -> str:
    reports = await trioflow.map(measure, cities)
    return (await warmest(reports=[r["report"] for r in reports]))["warmest"]


@trioflow.tool(outputs=["rate"], cache=trioflow.Cache(expire=dt.timedelta(hours=1)))
async def exchange_rate(currency: str) -> float:
    ran.append(f"rate {currency}")
    return {"EUR": 1.0, "NOK": 11.7}[currency]


@trioflow.graph_fn(outputs=["total"])
async def invoice(amounts: list[float], currency: str) -> float:
    rate = (await exchange_rate(currency=currency))["rate"]
    return round(sum(amounts) * rate, 2)


def main() -> None:
    store = trioflow.SQLiteStore(Path(tempfile.mkdtemp()) / "runs.db")
    cities = {"cities": ["Lisbon", "Rome", "Oslo"]}

    # 1. The first run fails at Oslo; what finished is in the store.
    try:
        trioflow.run(weather, inputs=cities, store=store, run_id="nightly")
    except trioflow.NodeFailed as exc:
        print("first run failed:", exc.__cause__)
    print("stored:", store.load("nightly").states())

    # 2. Resume: only what did not finish runs again.
    flaky["fail"] = False
    ran.clear()
    result = trioflow.run(weather, inputs=cities, store=store, run_id="nightly", resume=True)
    print("resumed:", result, "ran again:", ran)
    assert result == {"warmest": "Rome"} and "Lisbon" not in ran and "Rome" not in ran

    # 3. Resuming with other inputs is refused: nothing stale is reused.
    try:
        trioflow.run(weather, inputs={"cities": ["Oslo"]}, store=store, run_id="nightly",
                     resume=True)  # fmt: skip
    except trioflow.ResumeMismatch as exc:
        print("mismatch:", exc)

    # 4. A graph_fn resumes by replay: its stored calls return their outputs without running.
    trioflow.run(weather_fn, inputs=cities, store=store, run_id="fn")
    ran.clear()
    trioflow.run(weather_fn, inputs=cities, store=store, run_id="fn", resume=True)
    print("replayed, ran again:", ran)
    assert ran == []

    # 5. A cached tool is reused across runs (same name, version and arguments).
    ran.clear()
    first = trioflow.run(invoice, inputs={"amounts": [10, 5], "currency": "NOK"}, store=store,
                         record=True)  # fmt: skip
    again = trioflow.run(invoice, inputs={"amounts": [3], "currency": "NOK"}, store=store,
                         record=True)  # fmt: skip
    print("invoices:", first.outputs, again.outputs, "rate looked up:", ran)
    assert ran == ["rate NOK"] and again.record.nodes["exchange_rate_1"].cached

    for info in store.runs():
        print(f"{info.run_id:10} {info.graph:10} {info.state.value}")


if __name__ == "__main__":
    main()
