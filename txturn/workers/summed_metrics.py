# -*- test-case-name: tests.test_workers -*-
"""
One C{/metrics} page for C{--workers N}: the supervisor asks every worker
for its samples (L{to_json}, over L{txturn.workers.control.Scrape}) and
serves their sum, so Prometheus scrapes one server, as with one process.

Every txturn metric is a counter or a gauge, and both add up across
workers (allocations alive, ports free, packets relayed).  A worker that
dies takes its gauges with it (its allocations are gone) but not its
counters: the supervisor keeps what the worker had counted at the last
scrape, so the server's counters never go backwards, which Prometheus
would read as a reset.
"""

from __future__ import annotations

import json
from typing import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

#: (family name, type, help) -> (sample name, sorted labels) -> value.
Families = dict[tuple[str, str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]


def to_json(registry: CollectorRegistry) -> str:
    """
    Every sample of C{registry}, as the supervisor reads it.
    """
    return json.dumps(
        [
            [family.name, family.type, family.documentation]
            + [[s.name, s.labels, s.value] for s in family.samples]
            for family in registry.collect()
        ],
        separators=(",", ":"),
    )


def from_json(text: str) -> Families:
    """
    What L{to_json} wrote, as L{Families}.
    """
    families: Families = {}
    for name, kind, documentation, *samples in json.loads(text):
        into = families.setdefault((name, kind, documentation), {})
        for sample, labels, value in samples:
            key = (sample, tuple(sorted(labels.items())))
            into[key] = into.get(key, 0.0) + value
    return families


def add(total: Families, more: Families, only_counters: bool = False) -> None:
    """
    Add C{more} into C{total}.
    """
    for family, samples in more.items():
        if only_counters and family[1] != "counter":
            continue
        into = total.setdefault(family, {})
        for key, value in samples.items():
            into[key] = into.get(key, 0.0) + value


class SummedMetrics:
    """
    The sum of the workers' metrics, with the counters of dead workers,
    and the supervisor's own.
    """

    def __init__(self) -> None:
        #: Worker index -> its samples at the last scrape.
        self.last: dict[int, Families] = {}
        #: The counters of workers that have died.
        self.retired: Families = {}
        self.restarts = 0
        self.alive = 0

    def scraped(self, index: int, text: str) -> None:
        self.last[index] = from_json(text)

    def worker_died(self, index: int) -> None:
        """
        Keep what worker C{index} had counted; forget its gauges.
        """
        add(self.retired, self.last.pop(index, {}), only_counters=True)

    def render(self, indexes: Iterable[int]) -> bytes:
        """
        The page: the workers C{indexes} as last scraped, plus the dead.
        """
        total: Families = {}
        add(total, self.retired)
        for index in indexes:
            add(total, self.last.get(index, {}))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(total, self))
        return generate_latest(registry)


class _Families:
    def __init__(self, families: Families, summed: SummedMetrics) -> None:
        self._families = families
        self._summed = summed

    def collect(self) -> Iterator[Metric]:
        for (name, kind, documentation), samples in sorted(self._families.items()):
            family = Metric(name, documentation, kind)
            for (sample, labels), value in sorted(samples.items()):
                family.add_sample(sample, dict(labels), value)
            yield family
        workers = Metric("turn_workers", "Worker processes running now.", "gauge")
        workers.add_sample("turn_workers", {}, self._summed.alive)
        yield workers
        restarts = Metric(
            "turn_worker_restarts", "Workers started again after one ended.", "counter"
        )
        restarts.add_sample("turn_worker_restarts_total", {}, self._summed.restarts)
        yield restarts
