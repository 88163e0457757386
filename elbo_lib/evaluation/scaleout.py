"""Scale-out with accelerate (docs/scale-out.md). Under ``accelerate launch --num_processes N`` each process measures
and scores its share of the images; the per-image results travel to the main process (accelerate's
``gather_object``), which puts them back in image order and writes the metrics once, so N processes give the
numbers of one. Started without a launcher (``python -m elbo_lib``, a notebook), one process does everything and
nothing here touches torch.distributed.

A process's share is images r, r + N, r + 2N, ... (:meth:`Processes.shard`), not accelerate's
``split_between_processes`` (contiguous blocks): it depends on nothing but (r, N, the number of images), so every
process knows every share without a message, and interleaving spreads lists ordered by scene, study level or size
evenly over the processes, where a contiguous block could hand one process all the hard images. Each image
belongs to exactly one process, so no two processes write the same measurement file, and a relaunch finds each
finished image in the cache whatever N it uses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

# set by torchrun (accelerate launch --multi_gpu / multi-node) and by the MPI launchers accelerate uses on CPUs
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
# a process that finishes its share waits in the gather for the slowest one: a whole share's imbalance on a large
# dataset can pass torch's default 30 minutes; a process that dies is noticed by the launcher, not by this timeout
COLLECTIVE_TIMEOUT = timedelta(hours=24)


class PeerStopped(RuntimeError):
    """Another process of the run ended before sharing its results (its own error is printed above)."""


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return default


def launched_world_size() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return _env_int(WORLD_SIZE_VARS, 1)


def process_label() -> str:
    """"process r of N: " under a launcher with several processes, else "" (prefixes a process's error line)."""
    world = launched_world_size()
    return f"process {_env_int(RANK_VARS, 0) + 1} of {world}: " if world > 1 else ""


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``index`` of ``count`` and the ``device`` it measures on (None: the
    caller's choice, in a single process)."""

    index: int = 0
    count: int = 1
    device: str | None = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def shard(self, n: int) -> list[int]:
        """This process's image indices among ``n``: every ``count``-th, from its ``index``."""
        return list(range(self.index, n, self.count))

    def label(self) -> str:
        """Appended to a progress bar's name: whose share it counts."""
        return f" [process {self.index + 1}/{self.count}]" if self.count > 1 else ""

    def barrier(self) -> None:
        if self.count > 1:
            try:
                PartialState().wait_for_everyone()
            except RuntimeError as e:  # gloo / NCCL: a peer's connection closed
                raise PeerStopped(self._stopped()) from e

    def gather(self, records: list[tuple[int, object]]) -> list | None:
        """Every process's ``(image index, record)`` pairs, on the main process as the records in image order
        (the order one process would have made them in); None on the others."""
        if self.count > 1:
            try:
                records = gather_object(records)
            except RuntimeError as e:
                raise PeerStopped(self._stopped()) from e
            if not self.is_main:
                return None
        return [r for _, r in sorted(records, key=lambda pair: pair[0])]

    def _stopped(self) -> str:
        return (f"process {self.index + 1} of {self.count}: another process stopped before sharing its results "
                "(its error is above); no metrics were written")


def processes(device: str | None = None) -> Processes:
    """This process's place in the run, joining accelerate's process group when the launcher started several.
    ``device``: the device asked for; with several processes each one measures on its own (accelerate's
    ``cuda:<local rank>``), or on the CPU with ``device="cpu"``, with ``accelerate launch --cpu``, or where torch
    sees no CUDA device (gloo)."""
    world = launched_world_size()
    if world <= 1:
        if _flag("ACCELERATE_USE_CPU") and os.environ.get("MASTER_PORT"):
            # accelerate's simple launcher sets MASTER_PORT only when asked for several processes or machines
            raise ValueError("accelerate launch --cpu started one process (it starts several CPU processes only "
                             "through mpirun); for N CPU processes use `accelerate launch --multi_gpu "
                             "--num_processes N ... --device cpu` (docs/scale-out.md)")
        return Processes(device=device)
    kind = None if device is None else torch.device(device).type
    if device is not None and torch.device(device).index is not None:
        raise ValueError(f"device {device!r}: with {world} processes each one takes its own device (cuda:<local "
                         "rank>); pass --device cuda or cpu, or leave it out")
    cpu = kind == "cpu" or _flag("ACCELERATE_USE_CPU") or (kind is None and not torch.cuda.is_available())
    state = PartialState(cpu=cpu, timeout=COLLECTIVE_TIMEOUT)
    if state.num_processes != world:
        raise RuntimeError(f"the launcher started {world} processes but accelerate joined {state.num_processes} "
                           f"({state.distributed_type}); on CPUs pass --device cpu")
    return Processes(state.process_index, state.num_processes, "cpu" if cpu else str(state.device))


def finish(procs: Processes) -> None:
    """Leave the process group at the end of a successful run (NCCL warns at exit otherwise)."""
    if procs.count > 1:
        PartialState().destroy_process_group()
