"""Side-by-side timings of segany and, when it is importable, the official ``segment_anything``.

Used by ``segany bench`` and the scripts in ``bench/``. Both implementations get the same weights
(the official model's random init, or a checkpoint) and the same images; calls alternate round-robin
so that load on a shared machine hits both alike, and medians are reported. The official package
is imported here only, for comparison; no inference path of segany depends on it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .modeling import Sam, SamConfig, build_sam
from .modeling.fast_ops import cpu_has_bf16, cpu_kernels
from .modeling.sam import PIXEL_MEAN, PIXEL_STD
from .predictor import PRECISIONS, SamPredictor

_NO_BF16 = "this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), so bfloat16 would be emulated"


def official_package() -> ModuleType | None:
    """``segment_anything`` if installed (the ``bench`` extra), else None."""
    try:
        return importlib.import_module("segment_anything")
    except ImportError:
        return None


def official_sam(config: SamConfig) -> torch.nn.Module:
    """The official package's Sam with the architecture of ``config`` (any size, e.g. the 512 px
    default model, not only the registry's three), built from its modules; random init, eval mode."""
    from functools import partial

    modeling = importlib.import_module("segment_anything.modeling")
    grid = config.img_size // config.patch_size
    model = modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.img_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=config.layernorm_eps),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=config.use_rel_pos,
            global_attn_indexes=list(config.encoder_global_attn_indexes),
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=modeling.TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    return model.eval()


def paired_models(
    model_type: str = "vit_b", checkpoint: str | None = None, with_official: bool = True, seed: int = 0
) -> tuple[Sam, torch.nn.Module | None]:
    """segany's model and the official one holding identical weights (random unless checkpoint)."""
    torch.manual_seed(seed)
    if checkpoint is not None:
        from .checkpoints import load_model

        ours = load_model(checkpoint)  # architecture inferred from the tensors
    else:
        ours = build_sam(model_type)
    other = None
    if with_official and official_package() is not None:
        other = official_sam(ours.config)
        if checkpoint is None:
            ours.load_state_dict(other.state_dict())
        else:
            other.load_state_dict(ours.state_dict())
    return ours.eval(), other


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, cpu: dict[str, list[float]] | None = None
) -> dict[str, list[float]]:
    """Wall times of each function over ``repeats`` round-robin rounds, after ``warmup`` rounds.
    ``cpu`` collects this process's CPU seconds per call too (steadier than wall time on a
    machine shared with other jobs, when the thread count is 1)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(warmup + repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
                if cpu is not None:
                    cpu.setdefault(name, []).append(time.process_time() - start_cpu)
    return times


def _cpu_summary(cpu: dict[str, list[float]], base: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"median_cpu_s": {k: round(statistics.median(v), 4) for k, v in cpu.items()}}
    if base in cpu:
        ref = statistics.median(cpu[base])
        out["cpu_speedup"] = {k: round(ref / statistics.median(v), 2) for k, v in cpu.items() if k != base}
    return out


def summary(times: Sequence[float]) -> dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": [round(t, 4) for t in times]}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def grid_points(shape: tuple[int, ...], per_side: int) -> np.ndarray:
    """(per_side**2, 2) (x, y) points at the centres of a regular grid over an (H, W) image."""
    h, w = shape[:2]
    xs = (np.arange(per_side) + 0.5) * w / per_side
    ys = (np.arange(per_side) + 0.5) * h / per_side
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)


def _official_predictor(official: torch.nn.Module) -> Any:
    return official_package().SamPredictor(official)  # type: ignore[union-attr]


def bench_encoder(
    model: Sam,
    official: torch.nn.Module | None,
    images: Sequence[np.ndarray],
    precisions: Sequence[str] = PRECISIONS,
    repeats: int = 3,
    points_per_side: int = 4,
) -> dict[str, Any]:
    """``set_image`` times per precision (and the official fp32, plus official bf16 autocast).

    Agreement: fp32 embeddings against the official (max relative error), and for each reduced
    precision the IoU of its masks with the fp32 masks for a grid of single-point prompts.
    """
    predictors, not_run = {}, {}
    for p in precisions:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the bf16 fallback's warning, reported below instead
            predictor = SamPredictor(model, precision=p)
        if predictor.precision != p:
            not_run[p] = f"runs as {predictor.precision} here: {_NO_BF16}"
        else:
            predictors[p] = predictor
    image = images[0]
    fns: dict[str, Callable[[], Any]] = {}
    if official is not None:
        off = _official_predictor(official)
        fns["official_fp32"] = lambda: off.set_image(image)

        device_type = next(official.parameters()).device.type

        def official_bf16() -> None:
            with torch.autocast(device_type, dtype=torch.bfloat16):
                off.set_image(image)

        if device_type != "cpu" or cpu_has_bf16():
            fns["official_bf16_autocast"] = official_bf16
        else:
            not_run["official_bf16_autocast"] = _NO_BF16
    for p, pred in predictors.items():
        fns[f"segany_{p}"] = lambda pred=pred: pred.set_image(image)
    cpu: dict[str, list[float]] = {}
    with torch.inference_mode():
        times = interleaved(fns, repeats, cpu=cpu)
    result: dict[str, Any] = {"image_shape": list(image.shape), "times": {k: summary(v) for k, v in times.items()}}
    if not_run:
        result["not_run"] = not_run
    result["cpu_time"] = _cpu_summary(cpu, "official_fp32")
    if official is not None:
        base = statistics.median(times["official_fp32"])
        result["speedup_vs_official_fp32"] = {
            k: round(base / statistics.median(v), 2) for k, v in times.items() if k != "official_fp32"
        }
    result["agreement"] = encoder_agreement(model, official, images, predictors, points_per_side)
    return result


@torch.inference_mode()
def encoder_agreement(
    model: Sam,
    official: torch.nn.Module | None,
    images: Sequence[np.ndarray],
    predictors: dict[str, SamPredictor],
    points_per_side: int = 4,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fp32 = predictors.get("fp32") or SamPredictor(model)
    off = _official_predictor(official) if official is not None else None
    rel_errors = []
    ious: dict[str, list[float]] = {p: [] for p in predictors if p != "fp32"}
    for image in images:
        fp32.set_image(image)
        ref = fp32.get_image_embedding()
        if off is not None:
            off.set_image(image)
            theirs = off.get_image_embedding()
            rel_errors.append(float((ref - theirs).abs().max() / theirs.abs().max()))
        points = grid_points(image.shape, points_per_side)
        ref_masks, _, _ = fp32.predict_batch(points[:, None], np.ones((len(points), 1)), multimask_output=False)
        for p in ious:
            predictors[p].set_image(image)
            masks, _, _ = predictors[p].predict_batch(points[:, None], np.ones((len(points), 1)), multimask_output=False)
            ious[p] += [mask_iou(a, b) for a, b in zip(masks[:, 0], ref_masks[:, 0])]
    if rel_errors:
        out["fp32_embedding_max_rel_error_vs_official"] = max(rel_errors)
    for p, values in ious.items():
        out[f"{p}_mask_iou_vs_fp32"] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "n": len(values)}
    return out


def bench_decoder(
    model: Sam,
    official: torch.nn.Module | None,
    image: np.ndarray,
    num_prompts: int = 64,
    repeats: int = 3,
    fast: bool = True,
) -> dict[str, Any]:
    """``num_prompts`` single-point prompts: one ``predict`` call each (ours and official), and all
    of them in one ``predict_batch`` call. Every side uses the same (segany fp32) embedding.

    fast: also time segany's bf16 decoder (``precision="bf16"``, on the same embedding) and
    report the IoU of its masks with the fp32 decoder's.

    The ``*_mask_each`` rows time the refinement loop's next call: each point again with the
    low-res logits of its first answer as the mask prompt (``predict(..., mask_input=...)``)."""
    ours = SamPredictor(model)
    with torch.inference_mode():
        ours.set_image(image)
    fast = fast and (model.device.type != "cpu" or cpu_has_bf16())  # else bf16 would be emulated, not timed
    points = grid_points(image.shape, int(np.ceil(np.sqrt(num_prompts))))[:num_prompts]
    labels = np.ones(1)
    fast_predictor = None
    if fast:
        fast_predictor = SamPredictor(model, precision="bf16")
        fast_predictor.set_embedding(ours.get_embedding())

    def ours_each() -> None:
        for pt in points:
            ours.predict(pt[None], labels)

    # The refinement loop's second call: the first answer's top low-res logits fed back.
    with torch.inference_mode():
        feedback = []
        for pt in points:
            _, scores, low = ours.predict(pt[None], labels)
            feedback.append(low[int(np.argmax(scores))][None])

    def ours_mask_each() -> None:
        for pt, mask in zip(points, feedback):
            ours.predict(pt[None], labels, mask_input=mask, multimask_output=False)

    fns: dict[str, Callable[[], Any]] = {}
    result: dict[str, Any] = {"num_prompts": len(points), "image_shape": list(image.shape)}
    if official is not None:
        off = _official_predictor(official)
        off.features = ours.get_image_embedding()
        off.original_size, off.input_size = ours.original_size, ours.input_size
        off.is_image_set = True

        def official_each() -> None:
            for pt in points:
                off.predict(pt[None], labels)

        def official_mask_each() -> None:
            for pt, mask in zip(points, feedback):
                off.predict(pt[None], labels, mask_input=mask, multimask_output=False)

        fns["official_predict_each"] = official_each
        fns["official_predict_mask_each"] = official_mask_each
        for key, kwargs in (("agreement_vs_official", [{}] * 8), ("mask_prompt_agreement_vs_official",
                            [{"mask_input": m, "multimask_output": False} for m in feedback[:8]])):
            diffs = []
            for pt, kw in zip(points[:8], kwargs):
                m1, s1, l1 = ours.predict(pt[None], labels, **kw)
                m2, s2, l2 = off.predict(pt[None], labels, **kw)
                diffs.append((np.abs(l1 - l2).max(), np.abs(s1 - s2).max(), (m1 != m2).mean()))
            result[key] = {
                "max_logit_diff": float(max(d[0] for d in diffs)),
                "max_iou_pred_diff": float(max(d[1] for d in diffs)),
                "max_mask_mismatch_fraction": float(max(d[2] for d in diffs)),
            }
    fns["segany_predict_each"] = ours_each
    fns["segany_predict_mask_each"] = ours_mask_each
    fns["segany_predict_batch"] = lambda: ours.predict_batch(points[:, None], np.ones((len(points), 1)))
    if fast_predictor is not None:
        fast_p = fast_predictor

        def fast_each() -> None:
            for pt in points:
                fast_p.predict(pt[None], labels)

        fns["segany_bf16_predict_each"] = fast_each
        fns["segany_bf16_predict_batch"] = lambda: fast_p.predict_batch(points[:, None], np.ones((len(points), 1)))
        with torch.inference_mode():
            want, _, _ = ours.predict_batch(points[:, None], np.ones((len(points), 1)))
            got, _, _ = fast_p.predict_batch(points[:, None], np.ones((len(points), 1)))
        ious = [mask_iou(a, b) for a, b in zip(got.reshape(-1, *got.shape[2:]), want.reshape(-1, *want.shape[2:]))]
        result["bf16_mask_iou_vs_fp32"] = {"mean": float(np.mean(ious)), "min": float(np.min(ious)), "n": len(ious)}
    cpu: dict[str, list[float]] = {}
    with torch.inference_mode():
        times = interleaved(fns, repeats, cpu=cpu)
    result["times"] = {k: summary(v) for k, v in times.items()}
    result["cpu_time"] = _cpu_summary(cpu, "official_predict_each")
    n = len(points)
    result["per_prompt_ms"] = {k: round(1000 * statistics.median(v) / n, 2) for k, v in times.items()}
    if official is not None:
        base = statistics.median(times["official_predict_each"])
        result["speedup_vs_official_predict_each"] = {
            k: round(base / statistics.median(v), 2)
            for k, v in times.items()
            if k not in ("official_predict_each", "official_predict_mask_each", "segany_predict_mask_each")
        }
        result["speedup_mask_prompt_vs_official"] = round(
            statistics.median(times["official_predict_mask_each"]) / statistics.median(times["segany_predict_mask_each"]), 2
        )
    return result


def match_records(ours: list[dict], official: list[dict], min_iou: float = 0.99) -> dict[str, Any]:
    """One-to-one matching of two generate() outputs (coco_rle records) at mask IoU >= min_iou
    (pycocotools IoU on the runs), with the largest difference of each matched field.

    Each official mask is compared first with ours at the same position (both sort by predicted
    IoU), and only searched among all of ours when that fails.
    """
    from pycocotools import mask as mask_utils

    def rle(record):
        return {"size": record["segmentation"]["size"], "counts": record["segmentation"]["counts"].encode("ascii")}

    ours_rle = [rle(r) for r in ours]
    pairs, taken, worst = [], set(), 1.0
    for j, record in enumerate(official):
        target = [rle(record)]
        if j < len(ours) and j not in taken:
            iou = float(mask_utils.iou([ours_rle[j]], target, [0])[0][0])
            if iou >= min_iou:
                pairs.append((j, j))
                taken.add(j)
                worst = min(worst, iou)
                continue
        ious = np.asarray(mask_utils.iou(ours_rle, target, [0])).ravel() if ours_rle else np.zeros(0)
        for i in np.argsort(-ious):
            if ious[i] < min_iou:
                break
            if int(i) not in taken:
                pairs.append((int(i), j))
                taken.add(int(i))
                worst = min(worst, float(ious[i]))
                break
    field_diff = {}
    for key in ("predicted_iou", "stability_score", "area"):
        field_diff[key] = max((abs(ours[i][key] - official[j][key]) for i, j in pairs), default=0.0)
    for key in ("bbox", "crop_box", "point_coords"):
        field_diff[key] = max(
            (float(np.abs(np.array(ours[i][key], float) - np.array(official[j][key], float)).max()) for i, j in pairs),
            default=0.0,
        )
    return {
        "matched": len(pairs),
        "official": len(official),
        "ours": len(ours),
        "same_position": sum(i == j for i, j in pairs),
        "min_matched_iou": worst if pairs else None,
        "max_field_diff": field_diff,
    }


def bench_everything(
    model: Sam,
    official: torch.nn.Module | None,
    image: np.ndarray,
    points_per_side: int = 32,
    repeats: int = 1,
) -> dict[str, Any]:
    """Automatic mask generation (``generate()`` with the official defaults) on one image, segany
    and official alternating, and whether the outputs are the same masks (:func:`match_records`)."""
    from .automatic import SamAutomaticMaskGenerator

    params = {"points_per_side": points_per_side, "output_mode": "coco_rle"}
    outputs: dict[str, list[dict[str, Any]]] = {}

    def run(name: str, generator: Any) -> Callable[[], None]:
        def go() -> None:
            # A fresh generator each call: no embedding reuse between repeats.
            outputs[name] = generator(**params).generate(image)

        return go

    fns = {"segany_generate": run("segany_generate", lambda **p: SamAutomaticMaskGenerator(model, **p))}
    if official is not None:
        official_cls = official_package().SamAutomaticMaskGenerator  # type: ignore[union-attr]
        fns["official_generate"] = run("official_generate", lambda **p: official_cls(official, **p))
    cpu: dict[str, list[float]] = {}
    with torch.inference_mode():
        times = interleaved(fns, repeats, warmup=0, cpu=cpu)
    result: dict[str, Any] = {
        "image_shape": list(image.shape),
        "params": params,
        "times": {k: summary(v) for k, v in times.items()},
        "cpu_time": _cpu_summary(cpu, "official_generate"),
        "masks": {k: len(v) for k, v in outputs.items()},
    }
    if official is not None:
        base = statistics.median(times["official_generate"])
        result["speedup_vs_official"] = round(base / statistics.median(times["segany_generate"]), 2)
        result["identity"] = match_records(outputs["segany_generate"], outputs["official_generate"])
    return result


_RSS_SCRIPT = """
import resource, sys, time, numpy as np, torch
if sys.argv[2] == "official":
    from segment_anything import sam_model_registry, SamPredictor
    model = sam_model_registry[sys.argv[1]]().eval()
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    predictor = SamPredictor(model)
else:
    from segany import build_sam, SamPredictor
    model = build_sam(sys.argv[1])
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    predictor = SamPredictor(model, precision=sys.argv[2])
image = np.random.default_rng(0).integers(0, 256, (768, 1024, 3), dtype=np.uint8)
start = time.perf_counter()
with torch.inference_mode():
    predictor.set_image(image)
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{rss_model} {rss} {seconds}")
"""


def peak_rss_encode(model_type: str = "vit_h", precision: str = "fp32") -> dict[str, Any]:
    """Peak resident memory of a fresh process that builds a random-weight model and encodes one
    1024x768 image (Linux ru_maxrss, KiB -> MiB). precision "official": the official package."""
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, model_type, precision], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    rss_model, rss_peak, seconds = proc.stdout.split()
    return {
        "model": model_type,
        "precision": precision,
        "peak_rss_mib_after_build": round(int(rss_model) / 1024, 1),
        "peak_rss_mib_encode": round(int(rss_peak) / 1024, 1),
        "encode_s": round(float(seconds), 2),
    }


def environment() -> dict[str, Any]:
    official = official_package()
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "official_package": getattr(official, "__file__", None) and "segment_anything",
        "cpu_count": os.cpu_count(),
        "cpu_bf16": cpu_has_bf16(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_kernels": dataclasses.asdict(cpu_kernels()),
        "loadavg_1min": os.getloadavg()[0],
        "maxrss_mib_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
