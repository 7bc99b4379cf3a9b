"""Zarr v3 stores written by the chunked stages (schemas in docs/ARCHITECTURE.md)."""
