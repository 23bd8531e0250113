"""``python -m zoo.cli``: the ``zoo`` command without its console script (``metanets demo`` runs it so)."""
import sys

from . import main

sys.exit(main())
