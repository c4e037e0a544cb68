"""Curation (DESIGN §13): per-sample facts from shard indexes -> duplicate groups and quality
filters -> a view (which samples training sees) and a report, without rewriting any tar."""

from musicoder.curation.config import CurateConfig, MatchConfig
from musicoder.curation.job import CurateResult, run

__all__ = ["CurateConfig", "CurateResult", "MatchConfig", "run"]
