"""Deepfake Detector: tells real from fake face images (measured on face swaps)."""

__version__ = "0.2.0"
