"""Frame-level audio features (DESIGN §4): presets `musicoder324` (default) and `logmel128`.

`config` holds the presets and their parameters (no torch), `filters` the filterbanks and CQT
kernels, `extract` the batched, device-agnostic extraction. The names below are the package's
public API (`musicoder.features.extract_features` is part of the command-line contract, §11).
"""

from musicoder.features.config import (
    LOGMEL128,
    MUSICODER324,
    FeatureConfig,
    channel_blocks,
    num_channels,
    num_frames,
    preset_config,
)
from musicoder.features.extract import FeatureExtractor, extract_features, get_extractor

__all__ = [
    "LOGMEL128",
    "MUSICODER324",
    "FeatureConfig",
    "FeatureExtractor",
    "channel_blocks",
    "extract_features",
    "get_extractor",
    "num_channels",
    "num_frames",
    "preset_config",
]
