"""Version of the tributary client package (kept in one place)."""

__version__ = "0.1.0"
