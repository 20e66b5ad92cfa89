"""The reference analyzer: a real native-protocol server that verifies, deduplicates, measures and acks."""

from logdist.analyzer.stats import AnalyzerStats, LatencyHistogram, SeqBitmap, merge

__all__ = ["AnalyzerStats", "LatencyHistogram", "SeqBitmap", "merge"]
