"""Chaos harness: faults injected one at a time under a steady open-loop load, the outcome
of every request checked against the README's promise: `python -m loadtests.chaos --help`
(`make chaos`)."""
