"""``python -m sim SCENARIO.yaml``: the simulator's front door (see ``sim/cli.py``, docs/simulator.md)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
