"""Latency histograms cheap enough for the lean paths: a bucket increment in a plain list per
observation, read (and turned into Prometheus histograms) only when /metrics is scraped."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds in seconds, Prometheus's defaults with four below 5 ms: an HLS part served from memory
# and an SQLite read take well under a millisecond, so that p50 needs buckets there; a blocking
# playlist reload takes up to a part's duration or more.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of durations by bucket: ``counts[i]`` holds those up to ``bounds[i]`` (and above the bound
    before it); the last count, those above every bound."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0  # seconds, every observation

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, count of observations up to it) for every bound and "+Inf": Prometheus's buckets."""
        out = []
        running = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def histograms(kinds: tuple[str, ...]) -> dict[str, Histogram]:
    """One histogram per kind of request (or operation)."""
    return {kind: Histogram() for kind in kinds}
