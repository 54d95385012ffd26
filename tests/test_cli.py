"""The segany command line on a real photo, and its handling of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany.cli import main
from segany.io import read_image

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_segment_real_photo(capsys, tmp_path, coco_photo, ref_checkpoint):
    image = read_image(coco_photo)
    h, w = image.shape[:2]
    mask_path, overlay_path = tmp_path / "mask.png", tmp_path / "overlay.png"
    code, out, err = run_cli(
        capsys, "segment", coco_photo, "--point", f"{w // 2},{h // 2}", "--point", "10,10,0",
        "--checkpoint", ref_checkpoint, "--multimask", "-o", mask_path, "--overlay", overlay_path, "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    assert len(result["scores"]) == 3 and result["best"] == int(np.argmax(result["scores"]))
    mask = np.array(Image.open(mask_path))
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    assert result["area"] == int((mask == 255).sum()) > 0
    overlay = np.array(Image.open(overlay_path))
    assert overlay.shape == (h, w, 3)
    # The overlay changes the image inside the mask and leaves pixels far outside it untouched.
    changed = np.abs(overlay.astype(int) - image.astype(int)).sum(-1) > 0
    assert changed[mask == 255].mean() > 0.9


def test_segment_box_text_output_and_all_masks(capsys, tmp_path, coco_photo, ref_checkpoint):
    out_path = tmp_path / "m.png"
    code, out, _ = run_cli(capsys, "segment", coco_photo, "--box", "50,60,300,280", "--point", "150,150",
                           "--checkpoint", ref_checkpoint, "--multimask", "--all-masks", "-o", out_path)
    assert code == 0
    assert out.count("score") == 3 and "<- best" in out
    assert all((tmp_path / f"m_{i}.png").exists() for i in range(3))


def test_info(capsys, ref_checkpoint, manifest):
    code, out, _ = run_cli(capsys, "info", ref_checkpoint, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["config"]["encoder_depth"] == manifest["model_config"]["encoder_depth"]
    assert info["parameters"]["total"] == sum(v for k, v in info["parameters"].items() if k != "total")
    code, out, _ = run_cli(capsys, "info", ref_checkpoint)
    assert "global blocks [1, 3]" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jpg", "--point", "1,1"], "image not found"),
        (["{text}", "--point", "1,1"], "not a readable image"),
        (["{photo}", "--point", "99999,5"], "outside"),
        (["{photo}", "--point", "1,abc"], "not a number"),
        (["{photo}", "--point", "1,2,3,4"], "expected 2 or 3"),
        (["{photo}", "--point", "1,2,7"], "LABEL must be 0 or 1"),
        (["{photo}", "--box", "300,10,100,200"], "x1 > x0"),
        (["{photo}", "--box", "1,2,3"], "expected 4"),
        (["{photo}"], "at least one --point or a --box"),
        (["{photo}", "--point", "5,5", "-o", "mask.jpg"], ".png"),
        (["{photo}", "--point", "5,5", "--max-pixels", "1000"], "take --max-pixels"),
        (["{png}", "--point", "5,5", "-o", "{png}"], "is the input image"),
        (["{jpg}", "--point", "5,5", "--overlay", "{jpg}"], "is the input image"),
        (["{m_1}", "--point", "5,5", "--multimask", "--all-masks", "-o", "{m}"], "is the input image"),
        (["{photo}", "--point", "5,5", "-o", "{m}", "--overlay", "{m}"], "name of its own"),
    ],
)
def test_segment_bad_input(capsys, tmp_path, coco_photo, ref_checkpoint, args, message):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    # The cases that name their input as an output work on copies: code that wrongly wrote there
    # must not touch the shared photo (an earlier version of this test overwrote it once).
    png = tmp_path / "photo.png"
    Image.open(coco_photo).save(png)
    jpg = tmp_path / "photo.jpg"
    jpg.write_bytes(Path(coco_photo).read_bytes())
    m_1 = tmp_path / "m_1.png"  # named as --all-masks names candidate 1 of -o m.png
    m_1.write_bytes(png.read_bytes())
    before = png.read_bytes(), jpg.read_bytes(), m_1.read_bytes()
    args = [a.format(photo=coco_photo, text=text, png=png, jpg=jpg, m_1=m_1, m=tmp_path / "m.png") for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.png")]
    code, out, err = run_cli(capsys, "segment", *args, "--checkpoint", ref_checkpoint)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert (png.read_bytes(), jpg.read_bytes(), m_1.read_bytes()) == before  # a refused run writes nothing over its input
    assert not (tmp_path / "m.png").exists()


def test_segment_without_model(capsys, tmp_path, coco_photo, monkeypatch):
    monkeypatch.setenv("SEGANY_CACHE", str(tmp_path))
    code, _, err = run_cli(capsys, "segment", coco_photo, "--point", "5,5", "-o", tmp_path / "m.png", "--model", "vit_b")
    assert code == 2 and "segany download vit_b" in err


def test_bad_checkpoint_is_one_line(capsys, tmp_path, coco_photo):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run_cli(capsys, "segment", coco_photo, "--point", "5,5", "-o", tmp_path / "m.png", "--checkpoint", bad)
    assert code == 2 and "not a PyTorch checkpoint" in err


def test_download_offline(capsys, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    code, _, err = run_cli(capsys, "download", "vit_l", "--dir", tmp_path)
    assert code == 1
    assert "sam_vit_l_0b3195.pth" in err and str(tmp_path) in err


def test_console_script_exit_code(tmp_path):
    """The installed entry point: a bad argument exits 2 with one line, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "segany.cli", "segment", str(tmp_path / "none.jpg"), "--point", "1,1", "-o", "x.png"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: image not found: {tmp_path / 'none.jpg'}"


def test_written_files_are_readable_by_others(tmp_path):
    from segany.io import atomic_write_bytes

    path = tmp_path / "out.json"
    old = os.umask(0o022)
    try:
        atomic_write_bytes(path, b"{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".*.tmp"))
