"""Deepfake Detector: tells real from fake (manipulated or generated) face images."""

__version__ = "0.2.0"
