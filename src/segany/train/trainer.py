"""Training SAM with simulated interaction: config, optimisation, checkpoints, DDP.

One step draws ``batch_size`` images (per process), samples up to ``max_masks`` objects of each,
encodes the images once and runs the 11-iteration prompt simulation of :mod:`.prompts` through the
prompt encoder and mask decoder, with the loss of :mod:`.losses` on every iteration.

Every random choice of step ``t`` on rank ``r`` comes from a generator seeded with (seed, t, r),
so ``--resume`` from a checkpoint at step t continues exactly as the uninterrupted run would have.
Checkpoints hold the model, optimizer, scheduler and scaler state and are written atomically.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..checkpoints import load_model, save_model
from ..io import atomic_write_bytes
from ..modeling import CONFIGS, Sam, SamConfig, build_sam
from ..modeling.fast_ops import cpu_has_bf16
from .data import COCO_ID, AugmentConfig, DataSource, ImageRecord, InteractiveDataset, load_source, read_folder_pairs
from .losses import LossWeights, interactive_loss, mask_iou, upsample_logits
from .prompts import FIRST, POINT, error_points, foreground_points, interaction_schedule, noisy_boxes


class ConfigError(ValueError):
    """A training config is malformed."""


@dataclass
class ValConfig:
    """Interactive validation during training (see :mod:`segany.evaluate.interactive`)."""

    images: str
    masks: str
    match: str | None = None
    limit: int | None = 48
    max_clicks: int = 5
    long_side: int = 500


@dataclass
class TrainConfig:
    model: str | dict[str, Any] = "vit_b"  # an official name or SamConfig fields
    init_checkpoint: str | None = None
    data: list[DataSource] = field(default_factory=list)
    data_root: str = "."
    output_dir: str = "runs/train"
    steps: int = 1000
    batch_size: int = 2  # images per step and process
    max_masks: int = 16  # objects per image (the paper: 64 per GPU)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    point_rounds: int = 8
    mask_rounds: int = 2
    box_prob: float = 0.5
    center_click_prob: float = 0.0  # clicks placed by the evaluation clicker instead of uniformly (0: the paper)
    grad_rounds: int | None = None  # None: loss on every iteration (the paper); k: first + k-1 random ones
    first_prompt_only_steps: int = 0  # curriculum: before this step train the first prompt only (no rounds)
    loss: LossWeights = field(default_factory=LossWeights)
    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 250
    lr_decay_steps: list[int] = field(default_factory=list)
    lr_decay_factor: float = 0.1
    grad_clip: float = 1.0
    layer_decay: float = 1.0  # layer-wise LR decay of the image encoder (1 = off)
    freeze_image_encoder: bool = False
    decoder_only: bool = False  # freeze the image and prompt encoders
    train_only: list[str] | None = None  # train only parameters under these names, e.g. [mask_decoder.iou_prediction_head]
    precision: str = "fp32"  # fp32 | bf16 | fp16
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    val_every: int = 0  # 0: no validation
    val: ValConfig | None = None
    device: str = "auto"
    threads: int | None = None
    workers: int = 0  # processes that prepare batches ahead (0: in the training process)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        try:
            if "data" in d:
                d["data"] = [DataSource(**s) for s in d["data"]]
            if "augment" in d:
                a = dict(d["augment"])
                if "scale_range" in a:
                    a["scale_range"] = tuple(a["scale_range"])
                d["augment"] = AugmentConfig(**a)
            if "loss" in d:
                d["loss"] = LossWeights(**d["loss"])
            if d.get("val") is not None:
                d["val"] = ValConfig(**d["val"])
            if "betas" in d:
                d["betas"] = tuple(d["betas"])
            cfg = cls(**d)
        except TypeError as e:
            raise ConfigError(f"bad config: {e}") from None
        if cfg.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be fp32, bf16 or fp16, got {cfg.precision!r}")
        if not cfg.data:
            raise ConfigError("config has no 'data' sources")
        for name in ("box_prob", "center_click_prob"):
            if not 0.0 <= float(getattr(cfg, name)) <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {getattr(cfg, name)!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def load_config(path: str | os.PathLike) -> TrainConfig:
    """A TrainConfig from a YAML (or JSON) file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file: a config is YAML (or JSON)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    return TrainConfig.from_dict(raw)


# ---------------------------------------------------------------------------------------------
# Model, optimizer, schedule


def build_model(cfg: TrainConfig, load_init: bool = True) -> Sam:
    """The config's architecture, with cfg.init_checkpoint's weights when load_init (a resumed run
    replaces every weight from its last.pt, so it neither reads nor needs the init checkpoint)."""
    if isinstance(cfg.model, str):
        if cfg.model not in CONFIGS:
            raise ConfigError(f"unknown model {cfg.model!r}; choose one of {sorted(CONFIGS)} or give SamConfig fields")
        arch = CONFIGS[cfg.model]
    else:
        try:
            arch = SamConfig.from_dict(dict(cfg.model))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"bad model config: {e}") from None
    if cfg.init_checkpoint and load_init:
        return load_model(cfg.init_checkpoint, config=arch, resize_positions=True)
    return build_sam(arch)


def _layer_id(name: str, depth: int) -> int:
    if name.startswith("image_encoder.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith(("image_encoder.patch_embed", "image_encoder.pos_embed")):
        return 0
    return depth + 1


def param_groups(model: Sam, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms and position tables; the image encoder's
    learning rate scaled by layer_decay ** (distance from the top)."""
    depth = len(model.image_encoder.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or "pos_embed" in name or "rel_pos" in name
        layer = _layer_id(name, depth)
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "lr_scale": cfg.layer_decay ** (depth + 1 - layer),
            }
        groups[key]["params"].append(p)
    out = [groups[k] for k in sorted(groups)]
    for g in out:
        g["lr"] = cfg.lr * g["lr_scale"]
    return out


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then multiplied by lr_decay_factor at each of lr_decay_steps."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return cfg.lr_decay_factor ** sum(step >= s for s in cfg.lr_decay_steps)


def _is_under(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` is ``prefix`` or inside the module ``prefix``."""
    return name == prefix or name.startswith(prefix + ".")


def set_trainable(model: Sam, cfg: TrainConfig) -> None:
    frozen = []
    if cfg.freeze_image_encoder or cfg.decoder_only:
        frozen.append(model.image_encoder)
    if cfg.decoder_only:
        frozen.append(model.prompt_encoder)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    if cfg.train_only is not None:
        names = dict(model.named_parameters())
        prefixes = [str(x).rstrip(".") for x in cfg.train_only]
        unmatched = [x for x in prefixes if not any(_is_under(n, x) for n in names)]
        if not prefixes or unmatched:
            raise ConfigError(
                f"train_only names no parameter of the model: {unmatched or prefixes}; give module names such as"
                " mask_decoder, mask_decoder.iou_prediction_head or image_encoder.neck"
            )
        for n, p in names.items():
            if not any(_is_under(n, x) for x in prefixes):
                p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("nothing left to train: train_only names only frozen parameters"
                          " (freeze_image_encoder / decoder_only freeze the encoders)")


# ---------------------------------------------------------------------------------------------
# The simulated interaction


class InteractiveStep(nn.Module):
    """Wraps a Sam so that one forward call runs a whole step's simulation (what DDP needs)."""

    def __init__(self, sam: Sam, cfg: TrainConfig) -> None:
        super().__init__()
        self.sam = sam
        self.cfg = cfg

    def _decode(self, embeddings, coords, labels, boxes, mask_input, multimask: bool):
        sam = self.sam
        points = (coords, labels) if coords is not None and coords.shape[1] > 0 else None
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return sam.mask_decoder(
            image_embeddings=embeddings,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )

    def forward(
        self, images: torch.Tensor, masks: list[torch.Tensor], rng: np.random.Generator, step: int = 0
    ) -> dict[str, torch.Tensor]:
        """images (N, 3, S, S) float 0..255; masks: N tensors (M_i, S, S) uint8. Returns the loss
        and metrics (scalars)."""
        cfg = self.cfg
        sam = self.sam
        x = (images - sam.pixel_mean) / sam.pixel_std
        if any(p.requires_grad for p in sam.image_encoder.parameters()):
            features = sam.image_encoder(x)
        else:
            with torch.no_grad():
                features = sam.image_encoder(x)
        gt = torch.cat(masks)
        owner = torch.cat([torch.full((len(m),), i, dtype=torch.long) for i, m in enumerate(masks)]).to(gt.device)
        use_box = torch.from_numpy(rng.random(len(gt)) < cfg.box_prob).to(gt.device)
        schedule = interaction_schedule(rng, cfg.point_rounds, cfg.mask_rounds)
        if step < cfg.first_prompt_only_steps:
            schedule = schedule[:1]
        with_grad = set(range(len(schedule)))
        if cfg.grad_rounds is not None and cfg.grad_rounds < len(schedule):
            others = rng.choice(np.arange(1, len(schedule)), size=max(0, cfg.grad_rounds - 1), replace=False)
            with_grad = {0, *others.tolist()}
        size = gt.shape[-1]
        total = gt.new_zeros((), dtype=torch.float)
        sums = {"focal": 0.0, "dice": 0.0, "iou_mse": 0.0}
        iou_first = []
        iou_last = []
        weight_sum = 0.0
        for box_group in (False, True):
            idx = torch.nonzero(use_box == box_group).flatten()
            if len(idx) == 0:
                continue
            g_gt = gt[idx]
            g_emb = features[owner[idx]]
            coords = torch.zeros((len(idx), 0, 2), device=gt.device)
            labels = torch.zeros((len(idx), 0), dtype=torch.long, device=gt.device)
            boxes = None
            prev = None
            for it, kind in enumerate(schedule):
                multimask = False
                if kind == FIRST:
                    if box_group:
                        boxes = noisy_boxes(g_gt, rng)
                    else:
                        coords = foreground_points(g_gt, rng, cfg.center_click_prob)[:, None]
                        labels = torch.ones((len(idx), 1), dtype=torch.long, device=gt.device)
                        multimask = True
                elif kind == POINT:
                    pred = upsample_logits(prev, size)[:, 0] > 0
                    c, l = error_points(pred, g_gt, rng, cfg.center_click_prob)
                    coords = torch.cat([coords, c[:, None]], dim=1)
                    labels = torch.cat([labels, l[:, None]], dim=1)
                grad = it in with_grad and torch.is_grad_enabled()
                last = it == len(schedule) - 1
                with torch.set_grad_enabled(grad):
                    low_res, iou_pred = self._decode(g_emb, coords, labels, boxes, prev, multimask)
                    if grad or low_res.shape[1] > 1:
                        out = interactive_loss(low_res, iou_pred, g_gt, cfg.loss)
                        chosen, iou = out.chosen, out.iou
                    else:
                        # A round without gradient and with one output needs no loss: its output is
                        # the one fed back, and its IoU is reported only after the first and last rounds.
                        chosen = torch.zeros(len(idx), dtype=torch.long, device=gt.device)
                        iou = mask_iou(upsample_logits(low_res.float(), size), g_gt)[:, 0] if it == 0 or last else None
                if grad:
                    w = len(idx) / len(gt) / len(with_grad)
                    total = total + out.total * w
                    for k in sums:
                        sums[k] += float(getattr(out, k)) * w
                    weight_sum += w
                rows = torch.arange(len(idx), device=gt.device)
                prev = low_res[rows, chosen][:, None].detach().float()
                if it == 0:
                    iou_first.append(iou)
                if last:
                    iou_last.append(iou)
        metrics = {k: torch.tensor(v / max(weight_sum, 1e-12)) for k, v in sums.items()}
        metrics["loss"] = total.detach()
        metrics["iou_first"] = torch.cat(iou_first).mean().detach()
        metrics["iou_last"] = torch.cat(iou_last).mean().detach()
        metrics["masks"] = torch.tensor(float(len(gt)))
        return {"loss": total, "metrics": metrics}


# ---------------------------------------------------------------------------------------------
# The training loop


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() if device_name == "auto" else device_name.startswith("cuda")
    if use_cuda:
        if world > 1:
            device = torch.device("cuda", info.local_rank)
        else:
            device = torch.device("cuda" if device_name == "auto" else device_name)
            if device.index is None:  # set_device needs an index
                device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu" if device_name == "auto" else device_name)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"could not read training checkpoint {path}: {str(e).splitlines()[0] if str(e) else e}") from None


def sample_batch(
    dataset: InteractiveDataset, batch_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``batch_size`` augmented images (N, 3, S, S) and their masks, skipping images left with none."""
    images, masks = [], []
    while len(images) < batch_size:
        sample = dataset.sample(int(rng.integers(0, len(dataset))), rng)
        if len(sample.masks) == 0:
            continue
        images.append(sample.image)
        masks.append(sample.masks)
    return torch.stack(images), masks


_worker_dataset: InteractiveDataset | None = None


def _init_batch_worker(dataset: InteractiveDataset) -> None:
    global _worker_dataset
    _worker_dataset = dataset
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    # The parent handles interruption; a worker just ends with the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _prepared_batch(key: tuple[int, int, int], batch_size: int):
    assert _worker_dataset is not None
    rng = np.random.default_rng(list(key))
    images, masks = sample_batch(_worker_dataset, batch_size, rng)
    return images, masks, rng.bit_generator.state


def validation_leaks(records: list[ImageRecord], cfg: TrainConfig) -> list[str]:
    """Names of training records that are validation images too: the same file stem, or the same
    COCO photo (the 12-digit id in the name; COCO-MVal and COCO share photos). The whole validation
    split counts (``val.match``), not only the ``val.limit`` objects validated during training,
    since the split is what a trained model is measured on."""
    assert cfg.val is not None
    root = Path(cfg.data_root)
    val_records = read_folder_pairs(root / cfg.val.images, root / cfg.val.masks)
    pattern = re.compile(cfg.val.match) if cfg.val.match else None
    stems = {r.name for r in val_records if pattern is None or pattern.search(r.name)}
    ids = {m.group(1) for s in stems if (m := COCO_ID.search(s))}
    return sorted(
        r.name for r in records if r.name in stems or ((m := COCO_ID.search(r.name)) is not None and m.group(1) in ids)
    )


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, show_progress: bool = True) -> None:
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist, self.device = init_distributed(cfg.device)
        if cfg.precision == "bf16" and self.device.type == "cpu" and not cpu_has_bf16():
            warnings.warn(
                "precision: bf16 on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): PyTorch emulates "
                "it, far slower than fp32; use precision: fp32 on this machine",
                stacklevel=2,
            )
        self.out = Path(cfg.output_dir)
        self.show_progress = show_progress and self.dist.is_main
        torch.manual_seed(cfg.seed)
        self.sam = build_model(cfg, load_init=not resume)
        set_trainable(self.sam, cfg)
        self.sam.to(self.device).train()
        self.step_module = InteractiveStep(self.sam, cfg)
        if self.dist.world_size > 1:
            self.model: nn.Module = nn.parallel.DistributedDataParallel(
                self.step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        else:
            self.model = self.step_module
        self.optimizer = torch.optim.AdamW(param_groups(self.sam, cfg), lr=cfg.lr, betas=cfg.betas)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=cfg.precision == "fp16" and self.device.type == "cuda"
        )
        records = []
        for source in cfg.data:
            records += load_source(source, cfg.data_root)
        if cfg.val is not None:
            leaks = validation_leaks(records, cfg)
            if leaks:
                raise ConfigError(
                    f"{len(leaks)} training image(s) are validation images too (the same stem or COCO photo as"
                    f" one in {cfg.val.images} matching {cfg.val.match!r}), e.g. {', '.join(leaks[:3])}: leave them"
                    " out of training (a source's include / exclude / exclude_ids_from)"
                )
        self.dataset = InteractiveDataset(records, self.sam.image_encoder.img_size, cfg.max_masks, cfg.augment)
        self.step = 0
        self.best: float | None = None
        if resume:
            self._resume()
        elif self.dist.is_main and (self.out / "last.pt").exists():
            raise ConfigError(f"{self.out / 'last.pt'} exists: pass --resume to continue it, or use another output_dir")
        self._stop = False
        self._pool = None
        self._pending: dict[int, Any] = {}  # step -> batch being prepared by a worker

    # -- state ------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model": self.sam.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best": self.best,
            "config": self.cfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def save_checkpoint(self) -> None:
        if self.dist.is_main:
            atomic_write_bytes(self.out / "last.pt", checkpoint_bytes(self.state()))

    def _resume(self) -> None:
        path = self.out / "last.pt"
        if not path.exists():
            raise ConfigError(f"nothing to resume: {path} does not exist")
        state = read_training_checkpoint(path)
        self.sam.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.best = state.get("best")
        torch.set_rng_state(state["torch_rng"])
        if self.dist.is_main:
            self._truncate_log(self.step)

    # -- logging ----------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (a killed run's tail)."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):  # a line cut by a kill
                continue
        atomic_write_bytes(self.log_path, ("\n".join(kept) + "\n" if kept else "").encode())

    def _log(self, entry: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    # -- loop -------------------------------------------------------------------------------

    def _step_key(self, step: int) -> tuple[int, int, int]:
        """The seed of every random choice of a step on this rank (exact resume, same batches in workers)."""
        return (self.cfg.seed, step, self.dist.rank)

    def _batch(self, rng: np.random.Generator):
        """The step's batch on the device. With ``workers``, it was drawn ahead in a worker from the
        same (seed, step, rank) generator, whose state after the draw is carried on here."""
        if self.cfg.workers > 0:
            images, masks, state = self._prefetch(self.step)
            rng.bit_generator.state = state
        else:
            images, masks = sample_batch(self.dataset, self.cfg.batch_size, rng)
        return images.to(self.device, non_blocking=True), [m.to(self.device, non_blocking=True) for m in masks]

    def _prefetch(self, step: int):
        import multiprocessing

        if self._pool is None:
            # spawn, not fork: a process forked after torch, OpenCV or OpenMP started their thread
            # pools can deadlock in its first parallel call (seen in the test suite). The dataset
            # (paths and annotation lists) is pickled to each worker once.
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.cfg.workers, initializer=_init_batch_worker, initargs=(self.dataset,))
        for s in range(step, min(step + self.cfg.workers, self.cfg.steps) + 1):
            if s not in self._pending:
                self._pending[s] = self._pool.apply_async(_prepared_batch, (self._step_key(s), self.cfg.batch_size))
        return self._pending.pop(step).get()

    def _close_pool(self) -> None:
        if self._pool is not None:
            # Let the batches in flight finish (a few seconds at most): terminate() with large
            # results still in the pipe can deadlock the pool's result thread.
            self._pool.close()
            self._pool.join()
            self._pool = None
            self._pending = {}

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def train_step(self) -> dict[str, float]:
        rng = np.random.default_rng(list(self._step_key(self.step)))
        images, masks = self._batch(rng)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            result = self.model(images, masks, rng, self.step)
        self.scaler.scale(result["loss"]).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.sam.parameters() if p.requires_grad], self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        metrics = {k: float(v) for k, v in result["metrics"].items()}
        if self.dist.world_size > 1:
            t = torch.tensor([metrics[k] for k in sorted(metrics)], device=self.device)
            dist.all_reduce(t)
            metrics = {k: float(v) / self.dist.world_size for k, v in zip(sorted(metrics), t)}
        metrics["lr"] = self.optimizer.param_groups[-1]["lr"]
        return metrics

    def validate(self) -> dict[str, Any] | None:
        if self.cfg.val is None or not self.dist.is_main:
            return None
        from ..evaluate.interactive import EvalOptions, evaluate, load_folder_objects
        from ..predictor import SamPredictor

        v = self.cfg.val
        root = Path(self.cfg.data_root)
        objects = load_folder_objects(root / v.images, root / v.masks, match=v.match, limit=v.limit)
        self.sam.eval()
        try:
            result = evaluate(
                SamPredictor(self.sam), objects, EvalOptions(max_clicks=v.max_clicks, long_side=v.long_side),
                progress=False,
            )
        finally:
            self.sam.train()
        return {"miou_at_clicks": result["miou_at_clicks"], "objects": result["objects"]}

    def _handle_signal(self, signum, frame) -> None:
        self._stop = True

    def fit(self, stop_at: int | None = None, max_minutes: float | None = None) -> dict[str, float]:
        from tqdm import tqdm

        cfg = self.cfg
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2).encode())
        previous = signal.signal(signal.SIGTERM, self._handle_signal)
        started = time.monotonic()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.show_progress, dynamic_ncols=True)
        window: list[dict[str, float]] = []
        last: dict[str, float] = {}
        try:
            while self.step < end and not self._stop:
                t0 = time.monotonic()
                metrics = self.train_step()
                metrics["seconds"] = time.monotonic() - t0
                window.append(metrics)
                last = metrics
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", iou=f"{metrics['iou_last']:.3f}")
                if self.step % cfg.log_every == 0 or self.step == end:
                    mean = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
                    self._log({"step": self.step, "train": {k: round(v, 5) for k, v in mean.items()}})
                    window = []
                if cfg.val_every and self.step % cfg.val_every == 0:
                    self._validate_and_keep_best()
                if self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if max_minutes is not None and time.monotonic() - started > max_minutes * 60:
                    break
        except KeyboardInterrupt:
            self._stop = True
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
            self._close_pool()
        self.save_checkpoint()
        if self.step >= cfg.steps and self.dist.is_main:
            save_model(self.sam, self.out / "final.safetensors")
        if self.dist.world_size > 1:
            dist.barrier()
        return {**last, "step": float(self.step)} if last else last

    def _validate_and_keep_best(self) -> None:
        val = self.validate()
        if val is None:
            return
        self._log({"step": self.step, "val": val})
        curve = val["miou_at_clicks"]
        score = float(np.mean(list(curve.values())))
        if self.best is None or score > self.best:
            self.best = score
            save_model(self.sam, self.out / "best.safetensors")
            atomic_write_bytes(
                self.out / "best.json", json.dumps({"step": self.step, "mean_miou": score, **val}, indent=2).encode()
            )


def train(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None, max_minutes: float | None = None) -> dict[str, float]:
    trainer = Trainer(cfg, resume=resume)
    try:
        return trainer.fit(stop_at=stop_at, max_minutes=max_minutes)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
