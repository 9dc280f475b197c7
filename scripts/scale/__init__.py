"""The parts of ``bench_scale.py``: its simulated nodes, worker processes, learning phase and report."""
