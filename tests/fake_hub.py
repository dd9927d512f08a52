"""The hub stand-in lives in `fakes.hub` (the benchmarks use it too); the tests' old name for it."""

from fakes.hub import SHA, FakeHub

__all__ = ["SHA", "FakeHub"]
