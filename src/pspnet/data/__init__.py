"""Datasets, label handling, augmentation and palettes."""
