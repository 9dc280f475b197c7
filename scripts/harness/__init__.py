"""The benchmark harness: what the benchmark scripts share (simulated engines, nodes, statistics, reports)."""
