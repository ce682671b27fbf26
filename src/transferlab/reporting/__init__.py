"""Tables, plots and reports, built from a run directory's JSON alone (no retraining to re-render)."""
