import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import pytest
import torch

from elbo_lib.models.random_init import (tiny_flux_pipeline, tiny_pixart_pipeline, tiny_playground_pipeline,
                                        tiny_sd3_pipeline, tiny_sd35_pipeline, tiny_sd_pipeline, tiny_sd_turbo_pipeline,
                                        tiny_sdxl_pipeline, tiny_sdxl_turbo_pipeline)

# two threads, as CI's machine, unless OMP_NUM_THREADS asks for another summation order (docs/determinism.md)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

FAMILIES = {
    "sd1": lambda: tiny_sd_pipeline("epsilon"),
    "sd2v": lambda: tiny_sd_pipeline("v_prediction"),
    "sdxl": tiny_sdxl_pipeline,
    "sd3": tiny_sd3_pipeline,
    # the paper's other Table III shapes, with the schedulers their hub repositories ship (random_init.HUB_SCHEDULERS)
    "sd-turbo": tiny_sd_turbo_pipeline,          # SD 2.1 layout, Euler with trailing spacing
    "sdxl-turbo": tiny_sdxl_turbo_pipeline,      # SDXL, Euler-ancestral with trailing spacing
    "playground": tiny_playground_pipeline,      # SDXL, EDM DPM-Solver, VAE latents_mean / latents_std
    "sd3.5": tiny_sd35_pipeline,                 # MMDiT-X: dual attention (image-only attn2), q/k RMS norm
    "flux": tiny_flux_pipeline,      # FLUX.1-dev shaped: guidance embedding, dynamic shift
    "pixart": tiny_pixart_pipeline,  # PixArt-Sigma shaped: learned sigma, masked T5 cross-attention
}


@pytest.fixture(scope="session")
def pipes():
    return {k: f() for k, f in FAMILIES.items()}


@pytest.fixture(params=list(FAMILIES))
def family_pipe(request, pipes):
    return request.param, pipes[request.param]


@pytest.fixture(scope="session")
def toy_image():
    import numpy as np
    from elbo_lib.toy.world import ToyObject, render
    objs = [ToyObject("red", "circle", 20, 22, 11), ToyObject("blue", "star", 44, 40, 12)]
    return render(objs, 64, np.random.default_rng(0))
