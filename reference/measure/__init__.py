"""The apparatus: what measures the runtime for the simulator, each a ``python -m`` command.

``profile`` (the cost components, a profile JSON), ``replay`` (each rank's share of a scenario, run
alone), ``cluster`` (a scenario's sweep on a shaped-link cluster of real processes), ``bench``
(single-process TTFT against transformers), ``kernel_tables`` (kernel breakdowns); ``timing`` is what
they share. docs/validation.md, docs/benchmarks.md.
"""
