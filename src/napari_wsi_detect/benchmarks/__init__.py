"""`wsi-detect bench NAME`: each module here has `add_arguments(parser)` and `run(args)`.

Benchmarks report ratios measured side by side in one run; tests never assert timings.
"""
