"""Train the toy text-to-image model from scratch (``make toy-model``).

Stages, each resumable from atomic checkpoints in ``work_dir``:
1. render the training scenes (deterministic from the seed);
2. train the VAE (reconstruction + a tiny KL term);
3. encode every scene once (posterior means; the toy VAE's posterior std is ~0.75 of the latents'
   spread, noise the UNet need not model); set the latent scaling factor to 1 / std(latents);
4. train the denoiser, keeping an exponential moving average: the UNet and the CLIP text encoder
   jointly on eps- or v-prediction, or (``--share-from``) the UNet alone, or the SD 3-shaped MMDiT on
   rectified flow with a shared, frozen text encoder; caption dropout for CFG;
5. save a ``StableDiffusionPipeline`` / ``StableDiffusion3Pipeline`` directory with the configs that made it.

Batches are drawn from a generator seeded by (seed, step), so a resumed run sees exactly the
batches an uninterrupted run would.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..paths import atomic_write

from .architecture import (ToyArchitecture, build_mmdit, build_pipeline, build_schedulers, build_text_encoder,
                           build_unet, build_vae)
from ..models.tokenizer import build_tokenizer
from .world import WorldConfig, sample_scene, training_caption, vocabulary


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    n_scenes: int = 20000
    vae_steps: int = 2500  # 1000 steps left small stars as blobs: the generation gate's objects survived the VAE
                           # round trip in 0.658 of prompts (0.875 at 2500; 0.950 as rendered): toy.check's ceiling
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    unet_steps: int = 4000
    batch: int = 32
    lr: float = 1e-3
    ema_decay: float = 0.999
    snr_gamma: float = 5.0  # > 0: min-SNR-gamma loss weighting (Hang et al. 2023); 0: the plain eps MSE
    checkpoint_every: int = 250
    threads: int = 2
    device: str = "cpu"  # "cuda" trains on a GPU; batches and noise are drawn on the CPU either way
    share_from: str = ""  # a pipeline this trainer saved: its VAE and text encoder are reused, frozen (UNet only)


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename (never a half-written checkpoint). Only tensors,
    numbers, strings and containers of them are saved, so :func:`load_checkpoint` can refuse anything else."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, device=None) -> dict:
    """A checkpoint written by :func:`atomic_save`, read with ``weights_only=True`` (tensors and plain
    containers only: a crafted file cannot run code)."""
    return torch.load(path, weights_only=True, map_location=device)


def _step_generator(seed: int, stage: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, stage, step])


def render_training_set(world: WorldConfig, n: int, seed: int) -> tuple[np.ndarray, list[list[str]]]:
    rng = np.random.default_rng([seed, 0])
    images = np.empty((n, world.image_size, world.image_size, 3), dtype=np.uint8)
    scenes_classes = []
    for i in tqdm(range(n), desc="render training scenes"):
        s = sample_scene(world, rng)
        images[i] = s.image
        scenes_classes.append(s.classes)
    return images, scenes_classes


def to_tensor(images_nhwc: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():  # one fused call over all tensors (bitwise the same as a per-tensor lerp_)
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def cached_training_set(world: WorldConfig, n: int, seed: int, work_dir: Path) -> tuple[np.ndarray, list[list[str]]]:
    """``render_training_set``, cached in ``work_dir/scenes.npz`` (keyed by world, n and seed)."""
    key = json.dumps({"world": dataclasses.asdict(world), "n": n, "seed": seed}, sort_keys=True)
    path = work_dir / "scenes.npz"
    if path.exists():
        with np.load(path) as z:
            if str(z["key"]) == key:
                return z["images"], json.loads(str(z["classes"]))
    images, classes = render_training_set(world, n, seed)
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, images=images, classes=json.dumps(classes), key=key))
    return images, classes


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor,
                   snr_gamma: float = 0.0, prediction_type: str = "epsilon") -> torch.Tensor:
    """MSE to the objective's target (eps, or v = alpha eps - sigma x0); with ``snr_gamma`` > 0 each sample
    is weighted by min-SNR-gamma (Hang et al. 2023), which caps the weight of the easy low-noise timesteps:
    min(SNR_t, gamma) / SNR_t for eps, min(SNR_t, gamma) / (SNR_t + 1) for v (the same weight in x0 terms)."""
    if snr_gamma < 0:
        raise ValueError(f"snr_gamma must be >= 0 (0 = unweighted), got {snr_gamma}")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if snr_gamma == 0:
        return per_sample.mean()
    a = alphas_cumprod.to(per_sample.device)[t]
    snr = a / (1 - a)
    return (per_sample * snr.clamp(max=snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)).mean()


def _weights_file(path: Path) -> Path:
    """The safetensors file of a saved pipeline component."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors weights in {path}")
    return files[0]


def _load_exported(module: torch.nn.Module, path: Path) -> None:
    """Load a saved pipeline component's safetensors into ``module``; only non-persistent buffers may be absent."""
    weights = _weights_file(path)
    missing, unexpected = module.load_state_dict(load_file(weights), strict=False)
    buffers = {n for n, _ in module.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise ValueError(f"{weights} does not fit the architecture: missing {sorted(set(missing) - buffers)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def init_source(init_from: str | Path, arch: ToyArchitecture) -> dict:
    """What ``--init-from`` records: the exported pipeline's path, its training history and a hash of its UNet."""
    src = Path(init_from)
    tj = src / "training.json"
    if not tj.exists():
        raise ValueError(f"--init-from {src}: no training.json there (a pipeline saved by this trainer is expected)")
    meta = json.loads(tj.read_text())
    if ToyArchitecture.normalised(meta.get("arch", {})) != json.loads(json.dumps(arch.to_dict())):
        raise ValueError(f"--init-from {src}: its architecture differs from the one asked for: {meta.get('arch')}")
    unet_file = _weights_file(src / "unet")
    return {"path": str(src), "unet_sha256": hashlib.sha256(unet_file.read_bytes()).hexdigest()[:16],
            "unet_steps_done": meta.get("unet_steps_done"), "train": meta.get("train"),
            "extensions": meta.get("extensions", []), "vae_seconds": meta.get("train_seconds", {}).get("vae", 0.0)}


def shared_source(path: str | Path) -> dict:
    """What ``--share-from`` records: the pipeline whose VAE and text encoder are reused, and their hashes."""
    src = Path(path)
    if not (src / "training.json").exists():
        raise ValueError(f"--share-from {src}: no training.json there (a pipeline saved by this trainer is expected)")
    meta = json.loads((src / "training.json").read_text())
    return {"path": str(src), "vae_seconds": meta.get("train_seconds", {}).get("vae", 0.0),
            **{f"{c}_sha256": hashlib.sha256(_weights_file(src / c).read_bytes()).hexdigest()[:16]
               for c in ("vae", "text_encoder")}}


def _run_meta(work_dir: Path, cfg: TrainConfig, world: WorldConfig, arch: ToyArchitecture, extend: bool,
              init_from) -> dict:
    """What ``work_dir``'s checkpoints were made with (``meta.json``); a different configuration is refused,
    except a larger ``unet_steps`` with ``extend`` (recorded under ``extensions``)."""
    meta_path = work_dir / "meta.json"
    # threads change no result; a device changes only floating-point rounding, and a run may resume elsewhere
    train_fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("threads", "device")}
    meta = {"train": train_fields, "world": dataclasses.asdict(world), "arch": arch.to_dict()}
    if init_from is not None:
        meta["init_from"] = init_source(init_from, arch)
    if cfg.share_from:
        meta["shared"] = shared_source(cfg.share_from)
    old = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if old is not None:
        old["train"].pop("threads", None); old["train"].pop("device", None)
        old["train"] = {**{k: v for k, v in train_fields.items() if k == "share_from" and not v}, **old["train"]}
        old["arch"] = ToyArchitecture.normalised(old.get("arch", {}))
        meta["extensions"] = old.get("extensions", [])
        old_steps = old["train"]["unet_steps"]
        if extend and old_steps < cfg.unet_steps:
            old["train"]["unet_steps"] = cfg.unet_steps
            meta["extensions"] = meta["extensions"] + [{"from_steps": old_steps, "to_steps": cfg.unet_steps}]
        old["extensions"] = meta["extensions"]
    if old is not None and old != json.loads(json.dumps(meta)):
        raise ValueError(f"{work_dir} holds checkpoints of a different configuration; remove it or pick another "
                         "--work-dir (or pass --extend to continue a run to more UNet steps)")
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta


def train_vae(x_all: torch.Tensor, cfg: TrainConfig, arch: ToyArchitecture, work_dir: Path, dev: torch.device,
              export_only: bool, init_from, init_seconds: float) -> tuple[torch.nn.Module, float]:
    """Stage 1: the AutoencoderKL (reconstruction + L1 + small KL), resumable from ``vae.pt``;
    returns the frozen VAE and its training seconds."""
    torch.manual_seed(cfg.seed)
    vae = build_vae(arch).to(dev)
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    vae_ckpt = work_dir / "vae.pt"
    start, seconds = 0, 0.0
    if init_from is not None:
        _load_exported(vae, Path(init_from) / "vae")
        start, seconds = cfg.vae_steps, init_seconds
    elif vae_ckpt.exists():
        st = load_checkpoint(vae_ckpt, dev)
        vae.load_state_dict(st["model"]); vae_opt.load_state_dict(st["opt"]); start = st["step"]
        seconds = st.get("seconds", 0.0)
    t_stage = time.time() - seconds
    if export_only and start < cfg.vae_steps:
        raise ValueError(f"the VAE has only {start} of {cfg.vae_steps} steps in {vae_ckpt}; nothing to export yet")
    bar = tqdm(range(start, cfg.vae_steps), desc="train VAE", initial=start, total=cfg.vae_steps)
    for step in bar:
        g = _step_generator(cfg.seed, 1, step)
        idx = torch.from_numpy(g.choice(cfg.n_scenes, cfg.vae_batch, replace=False))
        x = x_all[idx].to(dev)
        torch.manual_seed(cfg.seed * 100003 + step)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + cfg.kl_weight * post.kl().mean()
        for pg in vae_opt.param_groups:  # cosine decay
            pg["lr"] = float(cfg.vae_lr * 0.5 * (1 + np.cos(np.pi * step / cfg.vae_steps)))
        vae_opt.zero_grad(); loss.backward(); vae_opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.vae_steps:
            seconds = time.time() - t_stage
            atomic_save({"model": vae.state_dict(), "opt": vae_opt.state_dict(), "step": step + 1,
                         "seconds": seconds}, vae_ckpt)
    return vae.eval().requires_grad_(False), seconds


def encode_latents(vae: torch.nn.Module, x_all: torch.Tensor, n: int, work_dir: Path, dev: torch.device) -> dict:
    """Stage 2: posterior means and stds of every training image, cached in ``latents.pt``."""
    lat_path = work_dir / "latents.pt"
    if lat_path.exists():
        return load_checkpoint(lat_path)
    means, stds = [], []
    for i in tqdm(range(0, n, 256), desc="encode latents"):
        d = vae.encode(x_all[i:i + 256].to(dev)).latent_dist
        means.append(d.mean.cpu()); stds.append(d.std.cpu())
    lat = {"mean": torch.cat(means), "std": torch.cat(stds)}
    atomic_save(lat, lat_path)
    return lat


def flow_noising(z0: torch.Tensor, eps: torch.Tensor, sched, tg: torch.Generator) -> tuple:
    """Rectified flow as diffusers' SD 3 training script draws it: u ~ logit-normal(0, 1) picks one of the
    scheduler's (shifted) training sigmas; z = (1 - sigma) x0 + sigma eps, the target velocity eps - x0,
    and the transformer's timestep 1000 sigma."""
    u = torch.sigmoid(torch.randn(z0.shape[0], generator=tg))
    k = (u * sched.config.num_train_timesteps).long().clamp(max=sched.config.num_train_timesteps - 1)
    sigma = sched.sigmas[k].to(z0.device).view(-1, 1, 1, 1)
    return (1 - sigma) * z0 + sigma * eps, sched.timesteps[k].to(z0.device), eps - z0


def _shared_text_encoder(arch: ToyArchitecture, tokenizer, share_from: str) -> torch.nn.Module:
    """The shared pipeline's text encoder, frozen; for the MMDiT with SD 3's (identity) pooled projection."""
    te = build_text_encoder(arch, tokenizer, projection=arch.denoiser == "mmdit")
    _load_exported(te.text_model if arch.denoiser == "mmdit" else te, Path(share_from) / "text_encoder")
    return te.requires_grad_(False).eval()


def train_denoiser(lat_mean: torch.Tensor, scaling: float, scene_classes: list[list[str]], tokenizer,
                   cfg: TrainConfig, world: WorldConfig, arch: ToyArchitecture, work_dir: Path, dev: torch.device,
                   export_only: bool, init_from, vae) -> dict:
    """Stage 3: the denoiser (UNet: eps or v loss with min-SNR weighting; MMDiT: plain rectified-flow loss),
    with the text encoder trained jointly unless shared, EMA of both, resumable from ``unet.pt``.
    Returns the EMA modules, the schedulers, the steps done, the stage's seconds and the recent losses."""
    torch.manual_seed(cfg.seed + 1)
    mmdit = arch.denoiser == "mmdit"
    if mmdit and not cfg.share_from:
        raise ValueError("the MMDiT toy model reuses a trained pipeline's VAE and text encoder: pass --share-from "
                         "(e.g. data/toy-sd)")
    unet = (build_mmdit if mmdit else build_unet)(arch).to(dev)
    text_encoder = build_text_encoder(arch, tokenizer).to(dev)
    if init_from is not None:
        _load_exported(unet, Path(init_from) / ("transformer" if mmdit else "unet"))
        _load_exported(text_encoder, Path(init_from) / "text_encoder")
    train_text = not cfg.share_from
    if not train_text:  # the shared text encoder stays as it is
        text_encoder = _shared_text_encoder(arch, tokenizer, cfg.share_from).to(dev)
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    train_sched, sample_sched = build_schedulers(arch)
    # the MMDiT is conditioned exactly as StableDiffusion3Pipeline conditions it (penultimate CLIP layers of both
    # encoders side by side, pooled projections, the zero T5 tokens), by that pipeline's own encode_prompt
    sd3 = build_pipeline(arch, vae, text_encoder, tokenizer, unet, sample_sched) if mmdit else None
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2, fused=True)  # fused: 6 ms/step instead of 22 ms
    ckpt = work_dir / "unet.pt"
    start, seconds = 0, 0.0
    if ckpt.exists():
        st = load_checkpoint(ckpt, dev)
        unet.load_state_dict(st["unet"]); text_encoder.load_state_dict(st["text"])
        ema_unet.load_state_dict(st["ema_unet"]); ema_text.load_state_dict(st["ema_text"])
        opt.load_state_dict(st["opt"]); start = st["step"]
        seconds = st.get("seconds", 0.0)
    t_stage = time.time() - seconds
    losses = []  # per-step losses, left on the device and read every 50 steps (no per-step GPU sync)
    lat_mean = lat_mean.to(dev)
    end = start if export_only else cfg.unet_steps
    what = "MMDiT" if mmdit else "UNet"
    bar = tqdm(range(start, end), desc=f"train {what} + text encoder" if train_text else f"train {what} (shared text encoder)",
               initial=start, total=cfg.unet_steps)
    for step in bar:
        g = _step_generator(cfg.seed, 2, step)
        idx = g.choice(cfg.n_scenes, cfg.batch, replace=False)
        caps = [training_caption(scene_classes[i], world, g) for i in idx]
        tg = torch.Generator().manual_seed(int(g.integers(2**62)))
        ii = torch.from_numpy(idx).to(dev)
        z0 = lat_mean[ii] * scaling  # posterior means: the VAE's posterior noise is not worth modelling
        eps = torch.randn(z0.shape, generator=tg).to(dev)
        if mmdit:
            with torch.no_grad():
                embeds, _, pooled, _ = sd3.encode_prompt(caps, caps, caps, device=dev, do_classifier_free_guidance=False,
                                                         max_sequence_length=arch.t5_tokens)
            zt, t, target = flow_noising(z0, eps, train_sched, tg)
            pred = unet(hidden_states=zt, timestep=t, encoder_hidden_states=embeds, pooled_projections=pooled).sample
            loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        else:
            ids = tokenizer(caps, padding="max_length", max_length=arch.max_length, truncation=True,
                            return_tensors="pt").input_ids
            t = torch.randint(0, arch.num_train_timesteps, (cfg.batch,), generator=tg).to(dev)
            zt = train_sched.add_noise(z0, eps, t)
            with torch.set_grad_enabled(train_text):
                text = text_encoder(ids.to(dev)).last_hidden_state
            pred = unet(zt, t, text).sample
            target = eps if arch.prediction_type == "epsilon" else train_sched.get_velocity(z0, eps, t)
            loss = diffusion_loss(pred, target, t, train_sched.alphas_cumprod, cfg.snr_gamma, arch.prediction_type)
        warm = min(1.0, (step + 1) / 200)
        for pg in opt.param_groups:
            pg["lr"] = float(cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / cfg.unet_steps))))
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        if train_text:
            _ema_update(ema_text, text_encoder, decay)
        losses.append(loss.detach())
        if (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{torch.stack(losses[-50:]).mean().item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.unet_steps:
            seconds = time.time() - t_stage
            atomic_save({"unet": unet.state_dict(), "text": text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
                         "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                         "seconds": seconds}, ckpt)
    return {"unet": ema_unet, "text_encoder": ema_text, "scheduler": sample_sched, "steps": end,
            "seconds": seconds, "losses": losses}


def export_pipeline(out_dir: Path, arch: ToyArchitecture, vae, stage: dict, tokenizer, training_json: dict) -> Path:
    """Save the pipeline (safetensors) to ``out_dir`` via a temporary directory; the reports next to the
    weights (quality.json, README.md) move over to the new one."""
    pipe = build_pipeline(arch, vae.cpu(), stage["text_encoder"].cpu(), tokenizer, stage["unet"].cpu(),
                          stage["scheduler"])
    tmp_out = out_dir.with_name(out_dir.name + ".tmp")
    pipe.save_pretrained(tmp_out, safe_serialization=True)
    (tmp_out / "training.json").write_text(json.dumps(training_json, indent=2))
    if out_dir.exists():
        for keep in ("quality.json", "README.md"):
            if (out_dir / keep).exists():
                os.replace(out_dir / keep, tmp_out / keep)
        shutil.rmtree(out_dir)
    os.replace(tmp_out, out_dir)
    return out_dir


def train(out_dir: str | Path = "data/toy-sd", work_dir: str | Path = ".cache/toy-train",
          cfg: TrainConfig = TrainConfig(), world: WorldConfig = WorldConfig(),
          arch: ToyArchitecture = ToyArchitecture(), export_only: bool = False, extend: bool = False,
          init_from: str | Path | None = None) -> Path:
    """Run (or resume) training and save the pipeline; ``export_only`` saves the pipeline from the
    latest checkpoints without training further; ``extend`` continues a finished run to a larger
    ``unet_steps`` (the cosine learning-rate schedule then restarts over the new horizon, recorded
    in training.json); ``init_from`` (a pipeline this trainer saved) starts the VAE, UNet and text encoder
    from its weights (the VAE stage is skipped; UNet steps count from 0 with a fresh optimiser and
    schedule), recorded in training.json as ``init_from``."""
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    t_start = time.time()
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    meta = _run_meta(work_dir, cfg, world, arch, extend, init_from)
    tokenizer = build_tokenizer(vocabulary(), model_max_length=arch.max_length)
    images, scene_classes = cached_training_set(world, cfg.n_scenes, cfg.seed, work_dir)
    x_all = to_tensor(images)
    vae_from = cfg.share_from or init_from
    vae_seconds = float(meta["shared" if cfg.share_from else "init_from"]["vae_seconds"] or 0.0) if vae_from else 0.0
    vae, vae_seconds = train_vae(x_all, cfg, arch, work_dir, dev, export_only, vae_from or None, vae_seconds)
    lat = encode_latents(vae, x_all, cfg.n_scenes, work_dir, dev)
    scaling = float(1.0 / lat["mean"].std())
    vae.register_to_config(scaling_factor=scaling)
    stage = train_denoiser(lat["mean"], scaling, scene_classes, tokenizer, cfg, world, arch, work_dir, dev,
                           export_only, init_from, vae)
    losses = stage["losses"]
    return export_pipeline(out_dir, arch, vae, stage, tokenizer, {
        **meta, "latent_scaling_factor": scaling, "elapsed_s_this_run": round(time.time() - t_start, 1),
        "train_seconds": {"vae": round(vae_seconds, 1),
                          "unet": round(stage["seconds"], 1)},  # both as of their last checkpoint
        "unet_steps_done": stage["steps"],
        "final_loss_mean_last_100": float(torch.stack(losses[-100:]).mean().cpu()) if losses else None,
        "recommended": {"elbo_template": "a photo of a {}", "caption_template": "a photo of {}"},
    })


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train the toy text-to-image model (resumable).")
    p.add_argument("--out", default="data/toy-sd")
    p.add_argument("--work-dir", default=".cache/toy-train")
    p.add_argument("--export-only", action="store_true", help="save the pipeline from the latest checkpoints")
    p.add_argument("--extend", action="store_true", help="continue a finished run to a larger --unet-steps")
    for f in dataclasses.fields(TrainConfig):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"],
                   help="the UNet's objective (v_prediction: as SD 2.x 768)")
    p.add_argument("--denoiser", default="unet", choices=["unet", "mmdit"],
                   help="mmdit: an SD 3-shaped transformer trained on rectified flow (needs --share-from)")
    p.add_argument("--init-from", default=None,
                   help="start from the weights of a pipeline this trainer saved (e.g. data/toy-sd)")
    a = p.parse_args(argv)
    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig)})
    arch = ToyArchitecture(prediction_type="flow_matching" if a.denoiser == "mmdit" else a.prediction_type,
                           denoiser=a.denoiser)
    out = train(a.out, a.work_dir, cfg, arch=arch, export_only=a.export_only, extend=a.extend, init_from=a.init_from)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
