"""The simulator held against measurements: measured TTFT per configuration (``measured.py``), each
rank's compute replayed alone (``replay.py``), a profile's held-out points (``held_out.py``), and their
plots (``plots.py``). docs/validation.md.
"""
