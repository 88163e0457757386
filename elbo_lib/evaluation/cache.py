"""On-disk cache of what the model computed per image (``Measurement``), written atomically.

Layout: ``<root>/measurements/<model key>/<settings key>/<image id>-<input key>.safetensors``; the input
key hashes what the model was given for that image (pixels, caption), so a dataset whose images change
under the same ids (a regenerated toy split, an edited study set) is measured afresh; the model key
hashes the model's name and, for local directories, its configs and each weight file's size and first
and last MiB; the settings key hashes exactly the fields that change denoiser outputs (plus the seed and
ELBO phrase variant). Files are safetensors with the measurement's text fields as JSON metadata:
no Python object is ever loaded from them, so a file dropped into a shared cache directory cannot run code.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..ablations import paper_subsets
from ..aligner import AlignConfig, Measurement
from ..paths import CACHE_DIR, atomic_write, atomic_write_json

SUFFIX = ".safetensors"


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# reports next to the weights and the thresholds chosen with them; they change no measurement
NOT_MODEL_FILES = ("quality.json", "README.md", "thresholds.json")


def _weights_fingerprint(f: Path, span: int = 1 << 20) -> str:
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(span)
        fh.seek(max(size - span, 0))
        tail = fh.read(span)
    return f"{size}:{hashlib.sha1(head + tail).hexdigest()}"


def model_key(model: str | os.PathLike) -> str:
    """A local model directory is keyed by its configs' contents and, per weight file, its size and a hash
    of its first and last MiB (a fine-tune saved in place changes those bytes; hashing whole multi-GB
    checkpoints on every call would be slow); reports such as the toy model's quality.json, and the thresholds
    recorded with it (thresholds.json), are excluded.
    A hub id is keyed by its name."""
    path = Path(model)
    parts: dict = {"name": str(model)}
    if path.is_dir():
        parts["name"] = path.resolve().name
        for f in sorted(path.rglob("*")):
            if f.name in NOT_MODEL_FILES and f.parent == path:
                continue
            if f.is_file() and f.suffix in (".json", ".txt"):
                parts[str(f.relative_to(path))] = hashlib.sha1(f.read_bytes()).hexdigest()
            elif f.is_file():
                parts[str(f.relative_to(path))] = _weights_fingerprint(f)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", parts["name"])[-40:]
    return f"{slug}-{_hash(parts)}"


def input_bytes(image, caption: str) -> bytes:
    """What a measurement is computed from, as bytes for the cache's input key: the pixels and the caption."""
    a = np.ascontiguousarray(np.asarray(image))
    return f"{a.shape}|{a.dtype}|{caption}|".encode() + a.tobytes()


def save_measurement(m: Measurement, path: str | os.PathLike) -> Path:
    tensors, meta = m.parts()
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"measurement": json.dumps(meta)}))


def load_measurement(path: str | os.PathLike) -> Measurement:
    """Read a measurement written by :func:`save_measurement`; anything else is a ValueError naming the file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["measurement"])
        # fresh allocations: tensors read from the file sit at arbitrary byte offsets, and float32 matrix products
        # on unaligned memory sum in another order on some CPUs (AVX2), so a cached measurement would finalize
        # differently from the fresh one (about 1e-3 on a heatmap)
        return Measurement.from_parts({k: v.clone() for k, v in load_file(str(path)).items()}, meta)
    except (SafetensorError, KeyError, ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a measurement file written by elbo_lib ({e}); delete it to re-measure") from e


def _read_rate(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a rate record written by elbo_lib ({e}); delete it") from e
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), (int, float)) and rec[k] > 0
                                            for k in ("seconds", "passes", "images")):
        raise ValueError(f"{path} is not a rate record written by elbo_lib; delete it")
    return rec


def _stem(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", image_id)


class MeasurementCache:
    def __init__(self, root: str | os.PathLike | None, model: str | os.PathLike, settings: dict):
        self.root = Path(root or CACHE_DIR)
        self.model_dir = self.root / "measurements" / model_key(model)
        self.dir = self.model_dir / _hash(settings)
        self.settings = settings

    def _path(self, image_id: str, inputs: bytes) -> Path:
        return self.dir / f"{_stem(image_id)}-{hashlib.sha1(inputs).hexdigest()[:12]}{SUFFIX}"

    def measured_ids(self, image_ids: list[str]) -> set[str]:
        """Which of ``image_ids`` have a measurement file here, by name alone (no image is read: a file made from
        other pixels or another caption under the same id counts too, and is measured again when met)."""
        if not self.dir.is_dir():
            return set()
        stems = {p.name[:-len(SUFFIX)].rsplit("-", 1)[0] for p in measurement_files(self.dir)}
        return {i for i in image_ids if _stem(i) in stems}

    def rate(self, device: str) -> dict | None:
        """What earlier runs of this model on ``device`` (a torch device type) measured: seconds, denoiser passes,
        images and cache bytes, summed over the processes that measured (``record_rate``); None before the first."""
        total = None
        for path in self._rate_files(device):
            rec = _read_rate(path)
            total = rec if total is None else {k: total.get(k, 0) + rec.get(k, 0)
                                               for k in ("seconds", "passes", "images", "bytes")}
        return total

    def _rate_path(self, device: str, process: int = 0) -> Path:
        # one file per process of a scaled-out run, so that no two processes rewrite the same file
        return self.model_dir / (f"rate-{device}.json" if process == 0 else f"rate-{device}.p{process}.json")

    def _rate_files(self, device: str) -> list[Path]:
        main = self._rate_path(device)
        others = sorted(self.model_dir.glob(f"rate-{device}.p*.json")) if self.model_dir.is_dir() else []
        return ([main] if main.exists() else []) + [p for p in others if p.name[len(f"rate-{device}.p"):-5].isdigit()]

    def record_rate(self, device: str, seconds: float, passes: int, nbytes: int, process: int = 0) -> None:
        """Add one measured image to the model's rate record on ``device`` (used to estimate later runs); process
        ``process`` of a scaled-out run keeps its own record, which :meth:`rate` adds up."""
        path = self._rate_path(device, process)
        rec = _read_rate(path) if path.exists() else {"seconds": 0.0, "passes": 0, "images": 0, "bytes": 0}
        rec = {"seconds": rec["seconds"] + seconds, "passes": rec["passes"] + passes, "images": rec["images"] + 1,
               "bytes": rec.get("bytes", 0) + nbytes}
        atomic_write_json(path, rec)

    def file_size(self, image_id: str, inputs: bytes) -> int:
        p = self._path(image_id, inputs)
        return p.stat().st_size if p.exists() else 0

    def has(self, image_id: str, inputs: bytes) -> bool:
        """Whether a measurement of ``image_id`` made from exactly ``inputs`` is here (without reading it)."""
        return self._path(image_id, inputs).exists()

    def get(self, image_id: str, inputs: bytes) -> Measurement | None:
        """The cached measurement of ``image_id`` made from exactly ``inputs`` (see ``input_bytes``), if any."""
        p = self._path(image_id, inputs)
        return load_measurement(p) if p.exists() else None

    def write_settings(self) -> None:
        """settings.json beside the measurements (what they were made with), once."""
        settings_file = self.dir / "settings.json"
        if not settings_file.exists():
            atomic_write_json(settings_file, self.settings, default=str)

    def put(self, image_id: str, m: Measurement, inputs: bytes) -> None:
        self.write_settings()
        save_measurement(m, self._path(image_id, inputs))

    def __len__(self) -> int:
        return len(measurement_files(self.dir)) if self.dir.exists() else 0


def measurement_caches(cache_dir: str | os.PathLike | None, model: str | os.PathLike, cfg: AlignConfig, seed: int,
                       baseline=None, nouns_only_elbo: bool = False, dtype: torch.dtype | None = None):
    """The cache of one measurement over a dataset (``cfg``'s measurement fields, the seed, the method: the
    Aligner's, or a ``baseline``'s with its ``method`` and ``elbo``; the denoiser's ``dtype`` unless float32, so
    an fp16 run and a float32 run never read each other's measurements); with ``nouns_only_elbo`` (Table IV) also
    the cache of the single-noun ELBO variant and its ELBO timestep indices. Returns (cache, noun cache, indices)."""
    settings = {"align": cfg.measurement_key(), "seed": seed, "nouns_only_elbo": False}
    if dtype is not None and dtype != torch.float32:  # float32 keys stay as they were: existing caches keep
        settings["dtype"] = str(dtype).removeprefix("torch.")
    method, elbo = (baseline.method, baseline.elbo) if baseline is not None else ("aligner", True)
    if method != "aligner" or not elbo:
        settings.update(method=method, elbo=elbo)
    cache = MeasurementCache(cache_dir, model, settings)
    if not nouns_only_elbo:
        return cache, None, None
    if baseline is not None:
        raise ValueError("nouns_only_elbo applies to ELBO-T2IAlign's measurement, not to a baseline's")
    noun_idx, _ = paper_subsets(cfg)  # the noun-phrase measurement with the single nouns' ELBO at the paper's timesteps
    noun_cache = MeasurementCache(cache_dir, model, {**settings, "nouns_only_elbo": True,
                                                     "elbo_idx": None if noun_idx is None else list(noun_idx)})
    return cache, noun_cache, noun_idx


def measurement_files(root: str | os.PathLike) -> list[Path]:
    """The finished measurement files under ``root`` (an interrupted write leaves only a dot-named temporary)."""
    return [p for p in Path(root).rglob(f"*{SUFFIX}") if not p.name.startswith(".")]


class ChunkCache:
    """Arrays a long run computes in fixed chunks of items (generations, edits): one safetensors file per chunk,
    keyed by the model, the run's settings and the chunk's items, written atomically. An interrupted run
    resumes at the first missing chunk, and chunk membership never changes, so a resumed run computes the
    same batches (bit for bit on CPU) as an uninterrupted one."""

    def __init__(self, root: str | os.PathLike | None, model: str | os.PathLike, kind: str, settings: dict):
        self.dir = Path(root or CACHE_DIR) / kind / model_key(model) / _hash(settings)
        self.settings = settings

    def run(self, items: list, chunk: int, compute) -> dict[str, np.ndarray]:
        """``compute(start, stop)`` -> {name: array with a leading axis of stop - start}; the chunks' arrays
        concatenated per name."""
        if chunk < 1:
            raise ValueError(f"chunk size must be >= 1, got {chunk}")
        parts: list[dict[str, np.ndarray]] = []
        for s in range(0, len(items), chunk):
            e = min(s + chunk, len(items))
            path = self.dir / f"{s:06d}-{_hash([str(x) for x in items[s:e]])}{SUFFIX}"
            if path.exists():
                parts.append({k: v.numpy() for k, v in load_file(str(path)).items()})
                continue
            arrays = {k: np.ascontiguousarray(v) for k, v in compute(s, e).items()}
            bad = [k for k, v in arrays.items() if len(v) != e - s]
            if bad:
                raise ValueError(f"compute({s}, {e}) returned arrays {bad} without {e - s} rows")
            if not (self.dir / "settings.json").exists():
                atomic_write_json(self.dir / "settings.json", self.settings, default=str)
            atomic_write(path, lambda tmp: save_file({k: torch.from_numpy(v) for k, v in arrays.items()}, str(tmp)))
            parts.append(arrays)
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
