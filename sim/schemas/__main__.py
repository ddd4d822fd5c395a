"""``python -m sim.schemas``: print the field tables of docs/schemas.md."""
import sys

from . import main

sys.exit(main())
