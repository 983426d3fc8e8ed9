"""Make the Space's own modules (classifier, evaluate) importable, as they are in the Space."""

import sys
from pathlib import Path

SPACE_DIR = str(Path(__file__).resolve().parent.parent)
if SPACE_DIR not in sys.path:
    sys.path.insert(0, SPACE_DIR)
