"""Parts of :mod:`benchmarks.bench_peers`: conversations, timing, counting, contestants."""
