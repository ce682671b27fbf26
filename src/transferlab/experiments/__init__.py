"""Experiments compose training phases and store every result in a run directory."""
