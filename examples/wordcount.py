"""A small crawl-and-count pipeline, run from the shell with the `trioflow` command:

    trioflow run examples/wordcount.py:wordcount --input top=5
    trioflow runs list
    trioflow graph examples/wordcount.py:wordcount --format mermaid

`fetch` pretends to download a page (a sleep stands in for the network, so the live progress has
something to show), `count` counts its words, `merge` adds the counts up and `top` picks the most
common words. The fan-out over pages is built when the `pages` input is known.
"""

from __future__ import annotations

import collections
import re
from typing import Any

import trio

import trioflow

# The "web": page name -> text.
PAGES = {
    "trio": "Trio is a friendly Python library for async concurrency and I/O. Trio makes "
    "structured concurrency the default: every task lives inside a nursery.",
    "nurseries": "A nursery is a scope for tasks. When the nursery block ends, every task "
    "started in the nursery has finished, so no task outlives the scope that started it.",
    "cancellation": "Cancel scopes make timeouts composable. Cancelling a scope cancels every "
    "task inside the scope at its next checkpoint.",
    "workflows": "A workflow is a graph of tasks. trioflow schedules each task of the graph as "
    "a node inside a nursery, so the graph inherits structured concurrency.",
    "durability": "A stored run can be resumed: the nodes that finished are not run again, "
    "their outputs come from the store.",
    "testing": "Virtual time makes concurrency tests exact: a mock clock jumps ahead whenever "
    "every task is blocked.",
}
ALL_PAGES = sorted(PAGES)
STOPWORDS = {"a", "an", "and", "as", "at", "be", "can", "every", "for", "from", "has", "in"}
STOPWORDS |= {"is", "it", "its", "of", "on", "so", "that", "the", "their", "to", "when"}


@trioflow.tool(outputs=["text"], retry=trioflow.Retry(attempts=3, backoff=0.1))
async def fetch(page: str) -> str:
    """Download one page (simulated: 0.2-1.2 s of latency, deterministic per page)."""
    await trio.sleep(0.2 + (sum(map(ord, page)) % 6) / 5)
    if page not in PAGES:
        raise LookupError(f"no page named {page!r}; pages: {sorted(PAGES)}")
    return PAGES[page]


@trioflow.tool(outputs=["counts"])
def count(text: str) -> dict[str, int]:
    """Word counts of one page, without stop words (a sync tool: it runs in a worker thread)."""
    words = re.findall(r"[a-z]+", text.lower())
    return dict(collections.Counter(w for w in words if w not in STOPWORDS))


@trioflow.tool(outputs=["totals"])
async def merge(counts: list[dict[str, int]]) -> dict[str, int]:
    totals: collections.Counter[str] = collections.Counter()
    for c in counts:
        totals.update(c)
    return dict(totals)


@trioflow.tool(outputs=["words"])
async def top(totals: dict[str, int], n: int) -> list[list[object]]:
    """The `n` most common words with their counts, most common first (ties alphabetical)."""
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return [[word, k] for word, k in ranked[:n]]


@trioflow.graphify(name="wordcount", outputs=["words", "pages"], max_concurrency=4)
def wordcount(pages: Any = ALL_PAGES, top_n: Any = 5) -> Any:
    texts = [fetch(page=pages[i]) for i in range(len(pages))]  # fan-out: one node per page
    counts = [count(text=t.text) for t in texts]
    totals = merge(counts=[c.counts for c in counts])  # fan-in
    return {"words": top(totals=totals.totals, n=top_n).words, "pages": len(pages)}


if __name__ == "__main__":
    print(trioflow.run(wordcount))
