"""MusiCoder: self-supervised music encoder pre-training platform."""

__version__ = "0.1.0"
