"""From folders on disk to labelled, decoded, split images."""
