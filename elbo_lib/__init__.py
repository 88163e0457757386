"""ELBO-T2IAlign: calibrating pixel-text alignment of diffusion models with per-class ELBOs."""
from .notices import silence_known_notices

silence_known_notices()  # before the imports below bring in diffusers and transformers

from .aligner import AlignConfig, Aligner, AlignmentResult, Measurement, finalize
from .attention import capture_attention
from .models import load_pipeline, speed_up, supported_pipelines

__all__ = ["AlignConfig", "Aligner", "AlignmentResult", "Measurement", "finalize", "capture_attention",
           "load_pipeline", "speed_up", "supported_pipelines"]
__version__ = "0.1.0"
