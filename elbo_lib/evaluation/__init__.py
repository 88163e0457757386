"""The zero-shot referring segmentation harness."""
from .cache import MeasurementCache
from .metrics import bootstrap_miou, confusion, miou, per_image_iu
from .official import score_heatmaps, write_heatmaps
from .runner import THRESHOLDS, Protocol, Source, evaluate, measure_dataset, metrics_table, options, score, summarize

__all__ = ["MeasurementCache", "bootstrap_miou", "confusion", "miou", "per_image_iu", "score_heatmaps", "write_heatmaps",
           "THRESHOLDS", "Protocol", "Source", "evaluate", "measure_dataset", "metrics_table", "options", "score",
           "summarize"]
