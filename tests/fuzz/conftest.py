import sys
from pathlib import Path

# tests/ on the path for the shared fixtures (conftest, hub_fixtures) and this package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
