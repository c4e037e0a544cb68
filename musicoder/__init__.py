"""MusiCoder: self-supervised music encoder pre-training platform.

`import musicoder` stays light (no torch): `musicoder.load_encoder` is resolved on first use.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_encoder"]


def __getattr__(name: str) -> Any:
    if name == "load_encoder":  # lazy: the encoder API imports torch and the model
        from musicoder.pretrained import load_encoder

        return load_encoder
    raise AttributeError(f"module 'musicoder' has no attribute {name!r}")
