"""Make the Space's modules (engine, tiers, ...) importable the way ``python app.py`` sees them."""

from __future__ import annotations

import sys
from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parent.parent
if str(SPACE_DIR) not in sys.path:
    sys.path.insert(0, str(SPACE_DIR))
