"""The trainer: exact resume, SIGKILL safety, DDP on CPU, freezing and learning-rate options."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from segany.cli import main
from segany.train.trainer import (
    ConfigError,
    TrainConfig,
    Trainer,
    build_model,
    load_config,
    lr_factor,
    param_groups,
    read_training_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = {
    "img_size": 64,
    "patch_size": 16,
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "window_size": 2,
    "prompt_embed_dim": 32,
    "mask_in_chans": 4,
    "decoder_mlp_dim": 64,
    "iou_head_hidden_dim": 32,
}


def tiny_config(data_dir: Path, out: Path, **overrides) -> dict:
    cfg = {
        "model": TINY_MODEL,
        "data_root": str(data_dir),
        "data": [
            {"kind": "folder", "images": "coco_mval/images", "masks": "coco_mval/masks", "include": "^airplane0[0-3]_"},
            {"kind": "coco", "images": "coco_tiny/train2017", "annotations": "coco_tiny/annotations/instances_train2017.json",
             "include": "^0000000(08193|24577)$"},
        ],
        "output_dir": str(out),
        "steps": 4,
        "batch_size": 2,
        "max_masks": 3,
        "augment": {"copy_paste_prob": 0.5, "scale_range": [0.5, 1.5], "color_jitter": 0.2},
        "point_rounds": 2,
        "mask_rounds": 1,
        "warmup_steps": 2,
        "lr": 1e-3,
        "checkpoint_every": 1,
        "log_every": 1,
        "threads": 1,
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_config_roundtrip_and_errors(tmp_path, data_dir):
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_config(data_dir, tmp_path / "run")))
    assert cfg.augment.scale_range == (0.5, 1.5) and cfg.data[1].kind == "coco"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "bad.yaml").write_text("steps: 3\nlearning_rate: 1\n")
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))  # an image given by mistake
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(tmp_path / "photo.jpg")
    assert main(["train", str(tmp_path / "photo.jpg")]) == 2
    with pytest.raises(ConfigError, match="center_click_prob must be a probability"):
        TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "run", center_click_prob=1.5))


def test_resume_continues_exactly(tmp_path, data_dir):
    straight = Trainer(TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "a")), show_progress=False)
    straight.fit()
    cfg_b = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "b"))
    Trainer(cfg_b, show_progress=False).fit(stop_at=2)
    assert read_training_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2
    with pytest.raises(ValueError, match="--resume"):
        Trainer(cfg_b, show_progress=False)
    resumed = Trainer(cfg_b, resume=True, show_progress=False)
    assert resumed.step == 2 and resumed.scheduler.last_epoch == 2
    resumed.fit()
    a = read_training_checkpoint(tmp_path / "a" / "last.pt")
    b = read_training_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    log_a = [json.loads(x) for x in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log_b] == [1, 2, 3, 4]
    assert [e["train"]["loss"] for e in log_a] == [e["train"]["loss"] for e in log_b]
    assert (tmp_path / "b" / "final.safetensors").exists()


def test_resume_does_not_need_the_init_checkpoint(tmp_path, data_dir):
    """A run started from init_checkpoint resumes from its own last.pt after the init file is gone
    (a later stage that continues an earlier one's folder, on a machine without the earlier weights)."""
    from segany.checkpoints import save_model

    init = tmp_path / "init.safetensors"
    save_model(build_model(TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "x"))), init)
    cfg = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "run", init_checkpoint=str(init)))
    Trainer(cfg, show_progress=False).fit(stop_at=2)
    init.unlink()
    with pytest.raises(Exception, match="init.safetensors"):
        Trainer(cfg, show_progress=False)  # a fresh start still needs it
    resumed = Trainer(cfg, resume=True, show_progress=False)
    saved = read_training_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert resumed.step == 2
    for k, v in resumed.sam.state_dict().items():
        assert torch.equal(saved[k], v), k
    resumed.fit()
    assert read_training_checkpoint(tmp_path / "run" / "last.pt")["step"] == 4


def test_a_training_state_loads_as_a_model(tmp_path, data_dir, coco_photo):
    """OUTPUT_DIR/last.pt of a run, stopped or not, is a checkpoint every tool reads (its TrainConfig
    gives the architecture), so a run can be evaluated mid-way without exporting it."""
    from segany.checkpoints import load_model

    trainer = Trainer(TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "run")), show_progress=False)
    trainer.fit(stop_at=2)
    last = tmp_path / "run" / "last.pt"
    model = load_model(last)
    assert model.image_encoder.img_size == TINY_MODEL["img_size"]
    state = model.state_dict()
    for k, v in trainer.sam.state_dict().items():
        assert torch.equal(state[k], v.cpu()), k
    out = tmp_path / "mask.png"
    assert main(["segment", str(coco_photo), "--point", "320,200", "--checkpoint", str(last), "-o", str(out)]) == 0
    assert out.exists()


def test_sigkill_mid_run_then_resume(tmp_path, data_dir):
    steps = 12
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config(data_dir, tmp_path / "run", steps=steps))
    cmd = [sys.executable, "-m", "segany.cli", "train", str(cfg_path)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / "run" / "last.pt"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists() and read_training_checkpoint(ckpt)["step"] >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed: " + proc.stderr.read().decode()[-500:]
        proc.send_signal(signal.SIGKILL)  # mid-run, possibly mid-write
    finally:
        proc.wait()
    killed_at = read_training_checkpoint(ckpt)["step"]
    assert 3 <= killed_at < steps
    with open(tmp_path / "run" / "log.jsonl", "a") as f:
        f.write('{"step": 99, "tra')  # as if killed in the middle of a log line
    done = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    final = read_training_checkpoint(ckpt)
    assert final["step"] == steps
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, steps + 1))  # the killed run's tail was replaced
    from segany import load_model

    load_model(tmp_path / "run" / "final.safetensors")


def test_ddp_two_processes_on_cpu(tmp_path, data_dir):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config(data_dir, tmp_path / "run", steps=2, batch_size=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "segany.cli", "train", str(cfg_path)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    state = read_training_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 2
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]  # only rank 0 writes


def test_frozen_encoder_and_layer_decay(tmp_path, data_dir):
    cfg = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "f", steps=2, freeze_image_encoder=True))
    t = Trainer(cfg, show_progress=False)
    before = {k: v.clone() for k, v in t.sam.state_dict().items()}
    t.fit()
    after = t.sam.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("mask_decoder."))

    cfg = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "g", layer_decay=0.5, weight_decay=0.1))
    groups = param_groups(build_model(cfg), cfg)
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales == [0.125, 0.25, 0.5, 1.0]  # patch embed, block 0, block 1, neck + decoder (depth 2)
    assert all(g["weight_decay"] == 0 for g in groups if all(p.ndim <= 1 for p in g["params"]))

    cfg = TrainConfig(warmup_steps=10, lr_decay_steps=[100, 200], lr_decay_factor=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == 1.0
    assert lr_factor(150, cfg) == pytest.approx(0.1) and lr_factor(250, cfg) == pytest.approx(0.01)


def test_decoder_only_bf16(tmp_path, data_dir):
    cfg = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "d", steps=1, decoder_only=True, precision="bf16"))
    t = Trainer(cfg, show_progress=False)
    before = {k: v.clone() for k, v in t.sam.state_dict().items()}
    metrics = t.fit()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    after = t.sam.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("image_encoder.", "prompt_encoder.")))


def test_train_only_the_iou_head(tmp_path, data_dir):
    """train_only trains the named parameters alone: here the IoU head, so the masks stay as they were."""
    cfg = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "h", steps=2, train_only=["mask_decoder.iou_prediction_head"]))
    t = Trainer(cfg, show_progress=False)
    before = {k: v.clone() for k, v in t.sam.state_dict().items()}
    t.fit()
    after = t.sam.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("mask_decoder.iou_prediction_head.") for k in changed)
    assert all(p.requires_grad == n.startswith("mask_decoder.iou_prediction_head.") for n, p in t.sam.named_parameters())

    bad = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "x", steps=1, train_only=["mask_decoder.iou_head"]))
    with pytest.raises(ConfigError, match="train_only names no parameter"):
        Trainer(bad, show_progress=False)
    frozen = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "y", steps=1, train_only=["image_encoder.neck"],
                                               freeze_image_encoder=True))
    with pytest.raises(ConfigError, match="nothing left to train"):
        Trainer(frozen, show_progress=False)


def test_centred_clicks_train(tmp_path, data_dir):
    """A step with every click placed by the evaluation clicker trains and differs from uniform clicks."""
    uniform = Trainer(TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "u", steps=1)), show_progress=False)
    centred = Trainer(TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "c", steps=1, center_click_prob=1.0)), show_progress=False)
    a, b = uniform.train_step(), centred.train_step()
    assert math.isfinite(b["loss"]) and a["iou_first"] != b["iou_first"]


def test_first_prompt_only_curriculum(tmp_path, data_dir):
    cfg = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "c", first_prompt_only_steps=1, box_prob=1.0))
    t = Trainer(cfg, show_progress=False)
    first = t.train_step()  # step 0: the noisy box only
    assert first["iou_first"] == first["iou_last"]
    later = t.train_step()  # step 1: box, then correction rounds
    assert later["iou_first"] != later["iou_last"]


def test_rounds_without_gradient_skip_the_loss(tmp_path, data_dir, monkeypatch):
    """Only the rounds that train (or choose among 3 outputs) compute the loss; every round feeds
    its output back, and the reported IoUs are those of the first and last outputs."""
    import numpy as np

    import segany.train.trainer as trainer_module
    from segany.train.losses import mask_iou, upsample_logits

    cfg = TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "r", grad_rounds=1, point_rounds=3, mask_rounds=2, box_prob=0.0))
    t = Trainer(cfg, show_progress=False)
    step = t.step_module
    rounds, losses = [], []
    decode, loss = step._decode, trainer_module.interactive_loss

    def recording_decode(emb, coords, labels, boxes, mask_input, multimask):
        out = decode(emb, coords, labels, boxes, mask_input, multimask)
        rounds.append((mask_input, out[0].detach()))
        return out

    def counting_loss(*args, **kwargs):
        losses.append(args[0].shape[1])
        return loss(*args, **kwargs)

    monkeypatch.setattr(step, "_decode", recording_decode)
    monkeypatch.setattr(trainer_module, "interactive_loss", counting_loss)
    rng = np.random.default_rng(0)
    images, masks = trainer_module.sample_batch(t.dataset, 2, rng)
    metrics = step(images, masks, rng)["metrics"]
    gt = torch.cat(masks)
    assert len(rounds) == 6 and losses == [3]  # 1 + 3 + 2 rounds; the loss on the first (3 outputs) only
    for (_, previous), (fed_back, _) in itertools.pairwise(rounds[1:]):
        assert torch.equal(fed_back, previous.float())  # one output, fed back as the next mask prompt
    expected = mask_iou(upsample_logits(rounds[-1][1].float(), gt.shape[-1]), gt)[:, 0].mean()
    assert float(metrics["iou_last"]) == pytest.approx(float(expected))
    assert math.isfinite(float(metrics["loss"]))


def test_prefetch_workers_train_the_same_steps(tmp_path, data_dir):
    """Batches drawn ahead in worker processes are the batches of the in-process run, and the
    prompt simulation continues from the same generator state: identical weights and losses."""
    Trainer(TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "a")), show_progress=False).fit()
    workers = Trainer(TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "b", workers=2)), show_progress=False)
    workers.fit(stop_at=2)
    assert workers._pool is None  # closed when fit returns
    Trainer(TrainConfig.from_dict(tiny_config(data_dir, tmp_path / "b", workers=2)), resume=True, show_progress=False).fit()
    a = read_training_checkpoint(tmp_path / "a" / "last.pt")
    b = read_training_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    losses = [[json.loads(x)["train"]["loss"] for x in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in "ab"]
    assert losses[0] == losses[1] and len(losses[0]) == 4


def test_device_train_script_sends_back_the_model(tmp_path, data_dir):
    """scripts/device_train.sh, as run on a lent GPU machine: trains, then sends the model of the
    run's last state back in parts that fit the device's 16 MiB per file."""
    from segany.checkpoints import load_model

    config = write_config(tmp_path / "c.yaml", tiny_config(data_dir, tmp_path / "run"))
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(["bash", str(REPO / "scripts" / "device_train.sh"), str(config), "2"], cwd=REPO,
                          env={**_env(), "OUT": str(out)}, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "train exit status 0" in done.stdout and (out / "log.jsonl").exists()
    parts = sorted(out.glob("weights.safetensors.part-*"))
    assert parts and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    (tmp_path / "weights.safetensors").write_bytes(b"".join(p.read_bytes() for p in parts))
    sent, kept = load_model(tmp_path / "weights.safetensors"), load_model(tmp_path / "run" / "final.safetensors")
    for k, v in kept.state_dict().items():
        assert torch.equal(sent.state_dict()[k], v), k
    missing = subprocess.run(["bash", str(REPO / "scripts" / "device_train.sh"), str(config)], cwd=REPO,
                             env={**_env(), "OUT": str(out)}, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode != 0 and "usage" in missing.stderr
