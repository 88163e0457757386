"""Pipeline adapters and loading."""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import torch

from .base import (OBJECTIVES, PipelineAdapter, TextCondition, adapter_class, adapter_for, supported_pipelines,
                   to_pil_rgb)
from .flux import FluxAdapter
from .pixart import PixArtSigmaAdapter
from .sd3 import StableDiffusion3Adapter
from .stable_diffusion import StableDiffusionAdapter, StableDiffusionXLAdapter

__all__ = ["OBJECTIVES", "PipelineAdapter", "TextCondition", "adapter_for", "supported_pipelines", "to_pil_rgb",
           "load_pipeline", "component_dtypes", "pipeline_class_name", "adapter_class", "model_hints", "dir_hints",
           "default_device_dtype", "speed_up", "precision", "PRECISIONS", "COMPILE_MODES", "StableDiffusionAdapter",
           "StableDiffusionXLAdapter", "StableDiffusion3Adapter", "FluxAdapter", "PixArtSigmaAdapter"]


def default_device_dtype(device: str | None = None, dtype: torch.dtype | None = None,
                         cuda_dtype: torch.dtype = torch.float16) -> tuple[str, torch.dtype]:
    """CUDA -> ``cuda_dtype`` (fp16; a family's adapter may ask for bf16, as FLUX does); CPU -> fp32.
    A device this torch cannot use (a misspelt name; CUDA without a CUDA device) is refused by name."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device name; use cpu, cuda, cuda:N or mps") from e
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available to this torch ({torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu or leave it out")
    if dtype is None:
        dtype = cuda_dtype if str(device).startswith("cuda") else torch.float32
    return device, dtype


def pipeline_class_name(model: str | os.PathLike) -> str | None:
    """The pipeline class a directory's or hub id's ``model_index.json`` names, before any weight is loaded
    (None where the index cannot be read, e.g. offline without a cache: loading then says why)."""
    from diffusers import DiffusionPipeline

    index = Path(model) / "model_index.json"
    try:
        with _hub_deprecations_quiet():
            config = json.loads(index.read_text()) if index.exists() else DiffusionPipeline.load_config(str(model))
    except (OSError, ValueError):
        return None
    return config.get("_class_name")


@contextlib.contextmanager
def _hub_deprecations_quiet():
    """diffusers 0.42 passes huggingface_hub an argument it has deprecated (``local_dir_use_symlinks``); the warning
    says nothing about the user's call, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
        yield


@contextlib.contextmanager
def _no_loading_bars():
    """diffusers' "Loading pipeline components" and transformers' "Loading weights" bars off while a pipeline
    loads (a notebook or the explorer page shows the workbook's own output); their previous state restored."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    states = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for m, _ in states:
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, enabled in states:
            if enabled:
                m.enable_progress_bar()


def load_pipeline(model: str | os.PathLike = "data/toy-sd", device: str | None = None,
                  dtype: torch.dtype | None = None, **kwargs):
    """Load a diffusers text-to-image pipeline from a local directory or a hub id.

    Device and dtype default to CUDA with the family's dtype (fp16; bf16 for FLUX) when available, else
    CPU + fp32; ``dtype`` is the denoiser's and the text encoders': the VAE always runs in fp32
    (:func:`component_dtypes`). The pipeline class is read from ``model_index.json`` first, so an unsupported
    family fails before its weights load, naming the supported classes. Missing weights give an error that says
    how to obtain them (this machine may be offline)."""
    from diffusers import DiffusionPipeline

    path = Path(model)
    if path.exists() and not (path / "model_index.json").exists():
        raise FileNotFoundError(f"{path} exists but has no model_index.json; it is not a diffusers pipeline directory")
    if not path.exists() and (str(model).startswith((".", "/")) or os.sep in str(model) and str(model).count("/") > 1):
        raise FileNotFoundError(f"no pipeline directory at {path}; for the toy model run `make toy-model`, "
                                "for hub models pass an id such as 'stabilityai/stable-diffusion-2-1-base'")
    name = pipeline_class_name(model)
    adapter = adapter_class(name) if name else None  # an unsupported class fails here, before its weights load
    device, dtype = default_device_dtype(device, dtype, adapter.cuda_dtype if adapter else torch.float16)
    if (path / "model_index.json").exists():  # components saved as absent (SD 3 without T5) are loaded as absent
        index = json.loads((path / "model_index.json").read_text())
        kwargs = {**{k: None for k, v in index.items() if v == [None, None]}, **kwargs}
    try:
        with _no_loading_bars(), _hub_deprecations_quiet():
            pipe = DiffusionPipeline.from_pretrained(str(model), dtype=component_dtypes(dtype), **kwargs)
    except (OSError, ValueError) as e:
        if path.exists():
            raise
        raise FileNotFoundError(
            f"could not load {model!r}: its weights are not in the local Hugging Face cache and the hub cannot be "
            f"reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). On a machine with internet access run "
            f"`huggingface-cli download {model}` (accepting the model's licence on the hub first if it is gated), "
            f"or pass a local directory.") from e
    adapter_for(pipe)  # unsupported families fail here, with the supported list
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def denoiser_dtype(model: str | os.PathLike, device: str | None = None, pipe=None) -> torch.dtype:
    """The denoiser's precision for a run: ``pipe``'s when it is given (after ``speed_up``, say), else the one
    ``load_pipeline(model, device)`` picks (fp32 on a CPU; the family's CUDA dtype on CUDA), without loading."""
    if pipe is not None:
        return adapter_for(pipe).denoiser.dtype
    name = pipeline_class_name(model)
    adapter = adapter_class(name) if name else None
    return default_device_dtype(device, None, adapter.cuda_dtype if adapter else torch.float16)[1]


def component_dtypes(dtype: torch.dtype) -> torch.dtype | dict:
    """What ``from_pretrained`` gets for a pipeline run in ``dtype``: the VAE always in float32, as the authors
    run it (their ``Diffusion`` casts ``pipe.vae`` to float32; SDXL's VAE overflows in fp16), every other
    component in ``dtype``. The adapters cast at the boundary (the image to the VAE's dtype, the latent to the
    denoiser's). float32 (the CPU default) is one dtype for all."""
    return dtype if dtype == torch.float32 else {"vae": torch.float32, "default": dtype}


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def precision(dtype: str | torch.dtype) -> torch.dtype:
    """A denoiser precision by name (``"fp32"``, ``"fp16"``, ``"bf16"``) or as the torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in PRECISIONS.values():
        return dtype
    if isinstance(dtype, str) and dtype in PRECISIONS:
        return PRECISIONS[dtype]
    raise ValueError(f"precision must be one of {list(PRECISIONS)} or the torch dtype, got {dtype!r}")


def speed_up(pipe, dtype: str | torch.dtype | None = None, channels_last: bool = False,
             compile: bool | str | None = None):
    """The GPU levers on a loaded pipeline, in place (returns it):

    - ``dtype``: every component in this precision except the VAE, which stays float32 (:func:`component_dtypes`);
      fp16 / bf16 round the denoiser's outputs, so measurements change beyond float noise;
    - ``channels_last``: the denoiser's 4-D weights in NHWC order, so cuDNN runs its convolutions without
      layout transposes (the latents follow the weights' format from the first convolution on);
    - ``compile``: ``torch.compile`` of the denoiser in place (``True`` is mode ``"default"``; or one of
      :data:`COMPILE_MODES`); the first pass of each batch shape pays the compilation, and the attention passes,
      whose capture processors keep Python state, run eagerly (:func:`..attention.eager_passes`).

    The method's own speed settings (``batch_size``, ``elbo_attention``) are :class:`~elbo_lib.AlignConfig` fields."""
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be True or False, got {channels_last!r}")
    if compile is True:
        compile = "default"
    if compile not in (None, False) and compile not in COMPILE_MODES:
        raise ValueError(f"compile must be True, False, None or one of {COMPILE_MODES}, got {compile!r}")
    denoiser = adapter_for(pipe).denoiser
    if dtype is not None:
        rule = component_dtypes(precision(dtype))
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                _cast(module, rule.get(name, rule["default"]) if isinstance(rule, dict) else rule)
    if channels_last:
        denoiser.to(memory_format=torch.channels_last)
    if compile:
        denoiser.compile(mode=compile)
    return pipe


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """``module`` in ``dtype``, except the submodules its class keeps in float32 (``_keep_in_fp32_modules``, as
    ``from_pretrained`` keeps them)."""
    if all(p.dtype == dtype for p in module.parameters() if p.is_floating_point()):
        return
    module.to(dtype=dtype)
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, sub in module.named_modules():
        if any(k in name.split(".") for k in keep):
            sub.to(dtype=torch.float32)


PROMPT_HINTS = ("elbo_template", "caption_template", "caption_item")


def dir_hints(model: str | os.PathLike) -> dict:
    """AlignConfig prompt templates recommended by a model directory's training.json (the toy model), else {}."""
    p = Path(model) / "training.json"
    rec = json.loads(p.read_text()).get("recommended", {}) if p.exists() else {}
    return {k: v for k, v in rec.items() if k in PROMPT_HINTS}


def model_hints(pipe) -> dict:
    """:func:`dir_hints` of the directory a loaded pipeline came from."""
    root = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return dir_hints(root) if root else {}
