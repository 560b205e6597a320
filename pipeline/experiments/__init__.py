"""Sweeps that reproduce each default, and their dated results (RESULTS.md beside this file)."""
