"""Speed and memory benchmarks; run them from the repository root (`python -m benchmarks.speed`)."""
