"""Access to the official reference listings copied into tests/data/."""

from pathlib import Path

DATA = Path(__file__).parent / "data"


def reference_file(name: str) -> Path:
    """Path of a reference file in tests/data/ (copied from the official code's listings)."""
    path = DATA / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the official reference listings belong in tests/data/")
    return path
