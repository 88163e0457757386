"""Library notices the workbook silences, each by name; every other warning still shows.

- transformers' torchvision fallback: without torchvision (the workbook does not need it) transformers announces
  that ``CLIPImageProcessor`` and ``SiglipImageProcessor`` fall back to their PIL versions. diffusers imports
  them on its own import; nothing of the workbook uses them, so the fallback changes nothing.
- diffusers' "There are modules in UNet2DConditionModel that should be kept in float32: []" on every ``model.to(dtype)``
  (``speed_up``'s precision lever), also when the list is empty, as it is for the supported families' UNets,
  transformers and VAEs; a non-empty list still shows (and ``speed_up`` keeps those modules in float32).

Two more notices are avoided rather than filtered: diffusers' ``torch_dtype`` deprecation (the workbook passes
``dtype``), and "Cannot initialize model with low cpu memory usage because `accelerate` was not found"
(accelerate is a dependency). Loading progress bars are switched off while a pipeline loads
(:func:`elbo_lib.models.load_pipeline`).
"""
from __future__ import annotations

import logging
import re

# (logger name, message pattern): each notice is matched by its own logger and its own text
SILENCED = [
    ("transformers.utils.import_utils",
     re.compile(r"^`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`")),
    ("diffusers.models.modeling_utils", re.compile(r"^There are modules in \w+ that should be kept in float32: \[\]\.")),
]


class _Silence(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def silence_known_notices() -> None:
    """Install the filters (idempotent). Runs on ``import elbo_lib``, before diffusers is imported."""
    for name, pattern in SILENCED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Silence) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(_Silence(pattern))
