"""The training engine: one process or many (``torchrun``), resumable after a kill.

Loop: batches of T-frame clips -> ``method.training_loss(batch)`` (the method unrolls over
the T frames: BPTT) -> Adam step -> learning-rate schedule. Every ``checkpoint_every`` steps,
``<output>/last.pt`` is rewritten atomically with everything needed for an identical
continuation: weights, optimizer, scheduler, AMP scaler, step, epoch, position in the epoch,
and the RNG states of every process (torch, CUDA, numpy, Python). Data randomness depends
only on (seed, epoch, index) and the order on (seed, epoch), so a run killed at any point and
resumed from its last checkpoint ends with the same weights as a run never interrupted.

Several processes: launch with ``torchrun --nproc_per_node N -m vos_models.cli.train ...``;
the engine reads RANK / WORLD_SIZE / LOCAL_RANK, uses gloo on CPU and NCCL on GPU, wraps the
loss in DistributedDataParallel, shards the data by rank and lets rank 0 write checkpoints,
logs and validation.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..atomic import write_text
from ..engine.interface import VOSMethod
from ..errors import CheckpointError, VOSInputError
from ..registry import load_checkpoint, save_checkpoint
from .run_log import RunLog
from .sampler import ResumableSampler

SCHEDULES = ("constant", "step", "exponential", "cosine", "poly")


@dataclass
class TrainConfig:
    """Everything that defines a run (saved in every checkpoint and in ``config.json``)."""

    output: str
    steps: int = 100
    batch_size: int = 2                 # per process
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"          # constant | step | exponential | cosine | poly
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()    # for "step": multiply by gamma at each
    gamma: float = 0.1                  # for "step" and "exponential"
    decay_every: int = 0                # for "exponential": steps per decay; 0 = one epoch (set by Trainer)
    poly_power: float = 0.9
    grad_clip: float | None = None
    amp: str = "none"                   # none | float16 | bfloat16
    checkpoint_every: int = 50
    val_every: int = 0
    log_every: int = 10
    plot_every: int = 10                # loss.png redrawn every plot_every logged rows (log_every steps each)
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    ddp_find_unused: bool = False       # DDP: allow parameters that get no gradient (slower)
    progress: bool = True
    extra: dict = field(default_factory=dict)   # free-form: data and method descriptions

    def validate(self) -> None:
        if self.steps < 1:
            raise VOSInputError(f"TrainConfig: steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise VOSInputError(f"TrainConfig: batch_size must be >= 1, got {self.batch_size}")
        if self.schedule not in SCHEDULES:
            raise VOSInputError(f"TrainConfig: schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in ("none", "float16", "bfloat16"):
            raise VOSInputError(f"TrainConfig: amp must be none, float16 or bfloat16, got {self.amp!r}")
        if self.decay_every < 0:
            raise VOSInputError(f"TrainConfig: decay_every must be >= 0 (0: once per epoch), got {self.decay_every}")
        if self.checkpoint_every < 1:
            raise VOSInputError(f"TrainConfig: checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.log_every < 1 or self.plot_every < 1:
            raise VOSInputError(f"TrainConfig: log_every and plot_every must be >= 1, got {self.log_every} "
                                f"and {self.plot_every}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["betas"], out["milestones"] = list(self.betas), list(self.milestones)
        return out


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    if config.schedule == "step":
        return config.gamma ** sum(step >= m for m in config.milestones)
    if config.schedule == "exponential":
        # torch's ExponentialLR stepped every decay_every optimizer steps (CRVOS: once per epoch)
        if config.decay_every < 1:
            raise ValueError("lr_factor: the exponential schedule needs decay_every >= 1 (the Trainer sets "
                             "0 to the number of steps per epoch)")
        return config.gamma ** (step // config.decay_every)
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "poly":
        return (1 - progress) ** config.poly_power
    return 1.0


class _LossModule(nn.Module):
    """DDP synchronises gradients through ``forward``: route the method's loss through it."""

    def __init__(self, method: VOSMethod):
        super().__init__()
        self.method = method

    def forward(self, batch: dict):
        return self.method.training_loss(batch)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> tuple[DistributedContext, torch.device]:
    """Read torchrun's environment; start the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VOSInputError(f"device {device_name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world, local), device


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng() -> dict:
    """This process's RNG states, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_to_plain(obj: Any) -> Any:
    """Lists for tuples, recursively: what the weights-only unpickler keeps."""
    if isinstance(obj, (tuple, list)):
        return [_python_to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _python_to_plain(v) for k, v in obj.items()}
    return obj


class Trainer:
    """Train ``method`` on ``dataset`` as ``config`` says.

    callbacks: functions ``f(trainer, step)`` called after each optimizer step (and after any
    checkpoint of that step): logging hooks, early stops, fault-injection in tests.
    validation: a function ``f(method) -> dict[str, float]`` (e.g. J&F), run on rank 0 every
    ``val_every`` steps.
    """

    def __init__(self, method: VOSMethod, dataset: Dataset, config: TrainConfig, *,
                 validation: Callable[[VOSMethod], dict[str, float]] | None = None,
                 callbacks: list[Callable[["Trainer", int], None]] | None = None):
        config.validate()
        if not method.trainable:
            raise VOSInputError(f"method {method.name!r} cannot be trained (it has no training loss)")
        if not any(p.requires_grad for p in method.parameters()):
            raise VOSInputError(f"method {method.name!r} has no trainable parameters")
        self.config = config
        self.dist, self.device = init_distributed(config.device)
        if config.amp == "float16" and self.device.type != "cuda":
            raise VOSInputError("amp float16 needs a GPU; use bfloat16 or none on CPU")
        self.output = Path(config.output)
        self.method = method.to(self.device)
        self.dataset = dataset
        self.validation = validation
        self.callbacks = list(callbacks or [])
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.stop_requested = False
        self.last_logs: dict[str, float] = {}
        self.best_score = -math.inf     # best validation J&F so far (kept in last.pt across resumes)
        self.run_log = RunLog(self.output, plot_every=config.plot_every)

        seed_everything(config.seed + self.dist.rank)

        loss_module = _LossModule(self.method)
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = nn.parallel.DistributedDataParallel(
                loss_module, device_ids=ids, find_unused_parameters=config.ddp_find_unused)
        else:
            self.model = loss_module
        params = [p for p in self.method.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "float16")
        self.sampler = ResumableSampler(len(dataset), num_replicas=self.dist.world_size, rank=self.dist.rank,
                                        seed=config.seed, shuffle=True)
        self.batches_per_epoch = self.sampler.per_rank // config.batch_size
        if self.batches_per_epoch < 1:
            raise VOSInputError(f"dataset of {len(dataset)} items gives no full batch of {config.batch_size} "
                             f"per process on {self.dist.world_size} process(es)")
        if config.schedule == "exponential" and config.decay_every == 0:
            config.decay_every = self.batches_per_epoch  # once per epoch, as torch's ExponentialLR
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(config, s))

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.output / "last.pt"

    @property
    def best_path(self) -> Path:
        """Weights of the step with the best validation J&F so far (written only with validation)."""
        return self.output / "best.pt"

    def save(self) -> None:
        """Write ``last.pt`` atomically (rank 0), with every rank's RNG state."""
        rng = capture_rng()
        if self.dist.enabled:
            gathered: list = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if self.dist.is_main:
            extra = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.dist.world_size, "best_score": self.best_score,
                "rng": [_python_to_plain(r) for r in gathered],
                "train_config": self.config.to_dict(),
            }
            save_checkpoint(self.checkpoint_path, self.method, extra)
        if self.dist.enabled:
            dist.barrier()

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from ``path`` (default ``<output>/last.pt``); False when there is none."""
        path = Path(path) if path is not None else self.checkpoint_path
        if not path.is_file():
            return False
        # CPU first: RNG states must stay CPU tensors; weights and optimizer state are copied
        # onto the parameters' device by load_state_dict.
        payload = load_checkpoint(path, expected_method=self.method.name, map_location="cpu")
        if "optimizer" not in payload:
            raise CheckpointError(f"{path} holds weights only, not a training state to resume")
        if payload["world_size"] != self.dist.world_size:
            raise CheckpointError(f"{path} was written by {payload['world_size']} process(es); resume it with the "
                                  f"same number, not {self.dist.world_size}")
        try:
            self.method.load_state_dict(payload["state_dict"], strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit {self.method.name!r}: {str(exc).splitlines()[0]}") from exc
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.step, self.epoch, self.batch_in_epoch = payload["step"], payload["epoch"], payload["batch_in_epoch"]
        restore_rng(payload["rng"][self.dist.rank])
        self.best_score = payload.get("best_score", -math.inf)  # checkpoints from before best.pt lack it
        if self.dist.is_main:
            self._truncate_log()
            self.run_log.truncate(self.step)
        return True

    # -- logging ----------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.output / "log.jsonl"

    def _log(self, record: dict) -> None:
        if self.dist.is_main:
            with open(self.log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def _truncate_log(self) -> None:
        """Drop log lines of steps after the checkpoint (a killed run logged them, a resumed one redoes them)."""
        if not self.log_path.is_file():
            return
        kept = [line for line in self.log_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.step]
        write_text(self.log_path, "".join(line + "\n" for line in kept))

    # -- the loop ---------------------------------------------------------------------------
    def _autocast(self):
        if self.config.amp == "none":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.float16 if self.config.amp == "float16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def _train_step(self, batch: dict) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss, logs = self.model(self._to_device(batch))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}")
        self.scaler.scale(loss).backward()
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in logs.items() if k != "loss"}}

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    def fit(self, max_steps_this_run: int | None = None) -> dict[str, float]:
        """Train until ``config.steps`` (or ``max_steps_this_run`` more steps, or SIGTERM: a
        checkpoint is written first). Returns the last logged values."""
        config = self.config
        if self.dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            write_text(self.output / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
            self.run_log.truncate(self.step)  # rows a killed run logged after its last checkpoint
        try:  # SIGTERM (cluster pre-emption, torchrun shutdown): checkpoint, then stop
            previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not in the main thread: no handler
            previous_handler = None
        stop_at = config.steps if max_steps_this_run is None else min(config.steps, self.step + max_steps_this_run)
        progress = None
        if config.progress and self.dist.is_main:
            from tqdm import tqdm
            progress = tqdm(total=config.steps, initial=self.step, desc=f"train {self.method.name}", unit="step")
        self.method.train()
        started = time.perf_counter()
        try:
            while self.step < stop_at and not self.stop_requested:
                if self.batch_in_epoch >= self.batches_per_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.epoch)
                self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * config.batch_size)
                # The loader's own generator, seeded by (seed, rank, epoch, position): creating its
                # iterator must not draw from the global RNG, which a resume has just restored.
                loader_generator = torch.Generator().manual_seed(
                    config.seed * 1_000_003 + self.dist.rank * 10_007 + self.epoch * 101 + self.batch_in_epoch)
                loader = DataLoader(self.dataset, batch_size=config.batch_size, sampler=self.sampler, drop_last=True,
                                    num_workers=config.num_workers, pin_memory=self.device.type == "cuda",
                                    generator=loader_generator)
                for batch in loader:
                    logs = self._train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    logs["lr"] = self.optimizer.param_groups[0]["lr"]
                    self.last_logs = logs
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix(loss=f"{logs['loss']:.4f}", epoch=self.epoch)
                    if self.step % config.log_every == 0 or self.step == stop_at:
                        seconds = round(time.perf_counter() - started, 3)
                        self._log({"step": self.step, "epoch": self.epoch, **logs, "elapsed_s": seconds})
                        if self.dist.is_main:
                            self.run_log.append(self.step, logs["loss"], logs["lr"], seconds)
                    if config.val_every and self.step % config.val_every == 0:
                        self._validate()
                    stopping = self.step >= stop_at or self._any_stop_requested()
                    if self.step % config.checkpoint_every == 0 or stopping:
                        self.save()
                    for callback in self.callbacks:
                        callback(self, self.step)
                    if stopping:
                        break
        finally:
            if progress is not None:
                progress.close()
            if self.dist.is_main:
                self.run_log.plot()  # the picture of every logged step, also after an error or Ctrl-C
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        return self.last_logs

    def _any_stop_requested(self) -> bool:
        if not self.dist.enabled:
            return self.stop_requested
        flag = torch.tensor([1.0 if self.stop_requested else 0.0])
        dist.all_reduce(flag)  # every rank must agree to stop at the same step
        self.stop_requested = bool(flag.item() > 0)
        return self.stop_requested

    def _validate(self) -> None:
        if self.validation is None:
            return
        if self.dist.is_main:
            scores = self.validation(self.method)
            self.method.train()
            score = scores.get("J&F-Mean", math.nan)
            if score > self.best_score:  # NaN never counts as better
                self.best_score = score
                save_checkpoint(self.best_path, self.method, {"step": self.step, "val_scores": scores})
            self._log({"step": self.step, "epoch": self.epoch, **{f"val_{k}": v for k, v in scores.items()}})
            if self.config.progress:
                print(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if self.dist.enabled:
            dist.barrier()

    def close(self, clean: bool = True) -> None:
        """Tear the process group down. After a clean run every rank first meets at a barrier (no
        rank closes its connections while another still uses them), then drops the DDP wrapper,
        whose reducer holds the group, and destroys the group: a rank once died of SIGABRT
        ("terminate called without an active exception") in a two-process run on a loaded
        2-core machine without them. After an error (``clean=False``) no barrier: another rank
        may never reach it."""
        if self.dist.enabled and dist.is_initialized():
            if clean:
                dist.barrier()
                if isinstance(self.model, nn.parallel.DistributedDataParallel):
                    self.model = self.model.module
            dist.destroy_process_group()
