"""Backbones, their pretrained weights, the new head, and which layers train."""
