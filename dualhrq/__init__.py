"""DualHRQ: Hierarchical Reasoning Model for market data."""

__version__ = "0.1.0"
