"""The embeddable chat widget: static files served by the API (no build step)."""

from pathlib import Path

__all__ = ["STATIC_DIR"]

STATIC_DIR = Path(__file__).resolve().parent
