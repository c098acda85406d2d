"""CoCosNet v2: exemplar-based person image synthesis with full-resolution correspondence."""

__version__ = "0.1.0"
