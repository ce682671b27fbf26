"""One training loop for every phase; the phases differ by which parameters train and what goes in."""
