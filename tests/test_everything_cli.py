"""segany everything on real images: outputs, resume, corrupt files, interruption, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from segany.cli import main
from segany.masks import decode_rle

IMAGES = ["000000005001.jpg", "000000010764.jpg"]


@pytest.fixture()
def folder(tmp_path, data_dir):
    src = tmp_path / "photos"
    src.mkdir()
    for name in IMAGES:
        shutil.copy(data_dir / "coco_tiny" / "val2017" / name, src / name)
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (src / "notes.txt").write_text("not an image, ignored")
    return src


def everything(ref_checkpoint, *args: str) -> int:
    fast = ["--points-per-side", "3", "--pred-iou-thresh", "0.5", "--stability-score-thresh", "0"]
    return main(["everything", *args, "--checkpoint", str(ref_checkpoint), *fast])


def no_temporary_files(path) -> bool:
    return not [p for p in path.rglob("*") if p.name.endswith(".tmp")]


def test_folder_to_sa1b_with_overlays_skips_corrupt_image(folder, tmp_path, ref_checkpoint, capsys):
    out = tmp_path / "out"
    assert everything(ref_checkpoint, str(folder), "--output", str(out), "--overlay", "--json") == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["processed"] == 2 and summary["already_done"] == 0
    assert [f["image"].endswith("broken.jpg") for f in summary["failed"]] == [True]
    assert "broken.jpg" in captured.err  # reported as it happens
    for name in IMAGES:
        stem = name.rsplit(".", 1)[0]
        doc = json.loads((out / f"{stem}.json").read_text())
        image = np.asarray(Image.open(folder / name))
        assert doc["image"]["file_name"] == name
        assert (doc["image"]["height"], doc["image"]["width"]) == image.shape[:2]
        assert doc["annotations"]
        for ann in doc["annotations"]:
            mask = decode_rle(ann["segmentation"])
            assert mask.shape == image.shape[:2] and int(mask.sum()) == ann["area"]
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.jpg"))
        assert overlay.shape == image.shape
    assert not (out / "broken.json").exists()
    assert no_temporary_files(out)


def test_resume_skips_finished_images(folder, tmp_path, ref_checkpoint, capsys):
    out = tmp_path / "out"
    assert everything(ref_checkpoint, str(folder), "-o", str(out)) == 0
    first, second = (out / f"{n.rsplit('.', 1)[0]}.json" for n in IMAGES)
    stamp = first.stat().st_mtime_ns
    capsys.readouterr()
    # Everything done: nothing is recomputed, so not even the model is needed.
    assert main(["everything", str(folder), "-o", str(out), "--checkpoint", str(tmp_path / "missing.pth"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["processed"] == 0 and summary["already_done"] == 2
    second.unlink()
    assert everything(ref_checkpoint, str(folder), "-o", str(out), "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["processed"] == 1 and summary["already_done"] == 1
    assert second.exists() and first.stat().st_mtime_ns == stamp


def test_interrupt_leaves_no_partial_output_and_resumes(folder, tmp_path, ref_checkpoint, monkeypatch, capsys):
    from segany.automatic import SamAutomaticMaskGenerator

    out = tmp_path / "out"
    original = SamAutomaticMaskGenerator.generate
    calls = []

    def interrupted(self, image):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, image)

    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", interrupted)
    assert everything(ref_checkpoint, str(folder), "-o", str(out), "--format", "coco") == 130
    assert no_temporary_files(out)
    assert not (out / "instances.json").exists()
    monkeypatch.setattr(SamAutomaticMaskGenerator, "generate", original)
    capsys.readouterr()
    assert everything(ref_checkpoint, str(folder), "-o", str(out), "--format", "coco", "--json") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["processed"] == 1 and summary["already_done"] == 1
    coco = COCO(str(out / "instances.json"))
    files = sorted(img["file_name"] for img in coco.loadImgs(coco.getImgIds()))
    assert files == IMAGES
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs([ann["image_id"]])[0]
        assert coco.annToMask(ann).shape == (img["height"], img["width"])
    assert no_temporary_files(out)


def test_single_image_to_png_label_map(tmp_path, data_dir, ref_checkpoint):
    image = data_dir / "coco_tiny" / "val2017" / IMAGES[1]
    assert everything(ref_checkpoint, str(image), "-o", str(tmp_path), "--format", "png") == 0
    labels = np.asarray(Image.open(tmp_path / f"{image.stem}.png"))
    assert labels.shape == np.asarray(Image.open(image)).shape[:2]
    assert labels.max() >= 1


def test_bf16_precision_gives_nearly_the_same_label_map(tmp_path, data_dir, ref_checkpoint):
    image = data_dir / "coco_tiny" / "val2017" / IMAGES[1]
    maps = {}
    for precision in ("fp32", "bf16", "int8"):  # bf16 runs as fp32 on a CPU without bf16 instructions
        out = tmp_path / precision
        assert everything(ref_checkpoint, str(image), "-o", str(out), "--format", "png", "--precision", precision) == 0
        maps[precision] = np.asarray(Image.open(out / f"{image.stem}.png"))
    fg32 = maps["fp32"] > 0
    assert fg32.any()
    for precision in ("bf16", "int8"):
        fg = maps[precision] > 0
        assert (fg32 & fg).sum() / (fg32 | fg).sum() > 0.95, precision


def test_bad_input(tmp_path, ref_checkpoint, folder, capsys):
    assert everything(ref_checkpoint, str(tmp_path / "nope"), "-o", str(tmp_path / "o")) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert everything(ref_checkpoint, str(empty), "-o", str(tmp_path / "o")) == 2
    assert everything(ref_checkpoint, str(folder / "broken.jpg"), "-o", str(tmp_path / "o")) == 2
    assert main(["everything", str(folder), "-o", str(tmp_path / "o"), "--points-per-side", "0"]) == 2
    assert main(["everything", str(folder), "-o", str(tmp_path / "o"), "--box-nms-thresh", "1.5"]) == 2
    assert main(["everything", str(folder), "-o", str(tmp_path / "o"), "--precision", "fp8"]) == 2
    assert main(["everything", str(folder), "-o", str(tmp_path / "no_model")]) == 2
    assert not (tmp_path / "no_model").exists()
    err = capsys.readouterr().err
    assert "input not found" in err and "no images" in err and "broken.jpg" in err
    assert "no model given" in err and "default.safetensors" in err and "--pred-iou-thresh 0.2" in err
    assert "Traceback" not in err
    # A folder of only unreadable images: nothing succeeded.
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"garbage")
    assert everything(ref_checkpoint, str(only_bad), "-o", str(tmp_path / "o")) == 1
    # An image over --max-pixels is refused with a one-line error naming the flag.
    capsys.readouterr()
    image = next(p for p in sorted(folder.iterdir()) if p.name != "broken.jpg")
    assert everything(ref_checkpoint, str(image), "-o", str(tmp_path / "o"), "--max-pixels", "1000") == 2
    err = capsys.readouterr().err
    assert "image too large" in err and "--max-pixels" in err and "Traceback" not in err


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["everything", "--help"])
    assert "example: segany everything" in capsys.readouterr().out
