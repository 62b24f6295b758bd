"""Retry a failing warm later and later (exponential backoff), never in a tight loop."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Retry:
    failures: int
    delay: float
    due: float  # time.time() of the next attempt


@dataclass
class Backoff:
    """Per key (a target and its fingerprint): how often it failed in a row and when it may be tried again.

    The n-th failure in a row waits `base * 2**(n-1)` seconds, at most `cap`. A success forgets the key; so does
    a change of fingerprint (new plans or software), which makes it another key."""

    base: float
    cap: float
    retries: dict[str, Retry] = field(default_factory=dict)

    def due(self, key: str, now: float) -> bool:
        retry = self.retries.get(key)
        return retry is None or now >= retry.due

    def failed(self, key: str, now: float) -> Retry:
        failures = self.retries[key].failures + 1 if key in self.retries else 1
        delay = min(self.cap, self.base * 2 ** (failures - 1))
        self.retries[key] = Retry(failures, delay, now + delay)
        return self.retries[key]

    def succeeded(self, key: str) -> None:
        self.retries.pop(key, None)
