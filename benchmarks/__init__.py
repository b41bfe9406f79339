"""flashclr's throughput and memory benchmarks (not installed with the package).

Run ``python benchmarks/run.py [--quick] [--plot] [--gpu]`` for every component's table, or
``pytest benchmarks/ --benchmark-only`` for pytest-benchmark's statistics and JSON. A plain package
so that ``import benchmarks.bench_nt_xent`` works from the repository root, beside
``import tests.references`` (the references the benchmarks compare against).
"""
