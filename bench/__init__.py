"""`make bench`: figures measured side by side with baselines, written to docs/benchmarks.md and .json."""
