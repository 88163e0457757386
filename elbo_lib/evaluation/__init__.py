"""The zero-shot referring segmentation harness."""
from .cache import MeasurementCache
from .metrics import bootstrap_miou, confusion, miou, per_image_iu
from .runner import THRESHOLDS, Variant, default_variants, evaluate, measure_dataset, score, summarize, summary_table

__all__ = ["MeasurementCache", "bootstrap_miou", "confusion", "miou", "per_image_iu", "THRESHOLDS", "Variant",
           "default_variants", "evaluate", "measure_dataset", "score", "summarize", "summary_table"]
