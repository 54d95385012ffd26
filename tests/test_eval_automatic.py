"""`segany eval automatic`: automatic masks scored as class-agnostic object proposals (mask AR@K)."""

from __future__ import annotations

import json
import shutil

import pytest

from segany.cli import main
from segany.evaluate.proposals import evaluate_proposals

PHOTOS = (5001, 10764)  # two COCO tiny val2017 photos: 18 non-crowd instances and a crowd region


@pytest.fixture()
def ground_truth(tmp_path, data_dir):
    doc = json.loads((data_dir / "coco_tiny" / "annotations" / "instances_val2017.json").read_text())
    images = [i for i in doc["images"] if i["id"] in PHOTOS]
    anns = [a for a in doc["annotations"] if a["image_id"] in PHOTOS]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": doc["categories"]}))
    return path, images, anns


def test_recall_counts_matched_objects_and_ranking(tmp_path, ground_truth):
    path, images, anns = ground_truth
    objects = [a for a in anns if not a["iscrowd"]]
    # The ground truth itself, as a results list: everything is recalled at every IoU.
    perfect = tmp_path / "perfect.json"
    perfect.write_text(json.dumps([{**a, "score": 1.0} for a in objects]))
    r = evaluate_proposals(path, perfect, (1, 100))
    assert r["targets"] == len(objects) and r["images"] == 2 and r["ar"]["100"] == 1.0
    assert r["ar_by_area"]["all"] == 1.0 and r["recall_50"]["100"] == 1.0
    # One mask per image counts: AR@1 recalls one object per photo.
    assert r["ar"]["1"] == pytest.approx(2 / len(objects), abs=1e-4)

    # Half the objects missing: recall falls to the fraction kept.
    half = tmp_path / "half.json"
    half.write_text(json.dumps([{**a, "score": 1.0} for a in objects[::2]]))
    assert evaluate_proposals(path, half, (100,))["ar"]["100"] == pytest.approx(len(objects[::2]) / len(objects), abs=1e-4)

    # Ranking: the right masks scored below junk (each photo's full frame) are cut at AR@1 only.
    frame = [{"image_id": i["id"], "score": 0.9,
              "segmentation": [[0, 0, i["width"], 0, i["width"], i["height"], 0, i["height"]]]} for i in images]
    ranked = tmp_path / "ranked.json"
    ranked.write_text(json.dumps(frame + [{**a, "score": 0.5} for a in objects]))
    r = evaluate_proposals(path, ranked, (1, 100))
    assert r["ar"]["1"] == 0.0 and r["ar"]["100"] == 1.0

    # The instances document of `segany everything --format coco`, with its own image ids: matched by name.
    doc = {"images": [{**i, "id": 100 + k} for k, i in enumerate(images)],
           "annotations": [{**a, "image_id": 100 + [i["id"] for i in images].index(a["image_id"]), "score": 1.0}
                           for a in objects],
           "categories": [{"id": 1, "name": "object"}]}
    as_doc = tmp_path / "instances.json"
    as_doc.write_text(json.dumps(doc))
    assert evaluate_proposals(path, as_doc, (100,))["ar"]["100"] == 1.0
    doc["annotations"] = []  # an image with no mask kept recalls nothing
    as_doc.write_text(json.dumps(doc))
    r = evaluate_proposals(path, as_doc, (100,))
    assert r["ar"]["100"] == 0.0 and r["predictions"] == 0 and r["targets"] == len(objects)


def test_cli_on_everything_output(tmp_path, data_dir, ground_truth, ref_checkpoint, capsys):
    path, images, _ = ground_truth
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(data_dir / "coco_tiny" / "val2017" / images[0]["file_name"], folder)
    out = tmp_path / "everything"
    assert main(["everything", str(folder), "-o", str(out), "--format", "coco", "--points-per-side", "8",
                 "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--checkpoint", str(ref_checkpoint)]) == 0
    masks = len(json.loads((out / "instances.json").read_text())["annotations"])
    capsys.readouterr()
    result = tmp_path / "ar.json"
    assert main(["eval", "automatic", "--coco", str(path), "--predictions", str(out / "instances.json"),
                 "--max-dets", "10", "100", "--output", str(result)]) == 0
    r = json.loads(result.read_text())
    assert r["images"] == 1 and r["predictions"] == masks > 0
    assert list(r["ar"]) == ["10", "100"] and all(0.0 <= v <= 1.0 for v in r["ar"].values())
    assert r["ar"]["10"] <= r["ar"]["100"]
    assert "AR@100" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(tmp_path, data_dir, ground_truth, capsys):
    path, images, anns = ground_truth
    photo = data_dir / "coco_tiny" / "val2017" / images[0]["file_name"]
    elsewhere = tmp_path / "elsewhere.json"  # an image the ground truth does not have
    elsewhere.write_text(json.dumps({"images": [{"id": 1, "file_name": "other.jpg", "width": 4, "height": 4}],
                                     "annotations": [], "categories": []}))
    broken = tmp_path / "broken_gt.json"  # an annotation without its image
    doc = json.loads(path.read_text())
    del doc["annotations"][0]["image_id"]
    broken.write_text(json.dumps(doc))
    small = tmp_path / "small.json"  # masks at another size than the annotated image
    small.write_text(json.dumps([{"image_id": images[0]["id"], "score": 1.0,
                                  "segmentation": {"size": [10, 10], "counts": [0, 100]}}]))
    unscored = tmp_path / "unscored.json"
    unscored.write_text(json.dumps([{"image_id": anns[0]["image_id"], "segmentation": anns[0]["segmentation"]}]))
    cases = [
        (["--coco", str(path), "--predictions", str(photo)], "not a JSON file"),
        (["--coco", str(path), "--predictions", str(tmp_path / "missing.json")], "cannot read"),
        (["--coco", str(path), "--predictions", str(elsewhere)], "not in the ground truth"),
        (["--coco", str(path), "--predictions", str(unscored)], "needs a segmentation and a score"),
        (["--coco", str(unscored), "--predictions", str(unscored)], "not a COCO instances JSON"),
        (["--coco", str(broken), "--predictions", str(unscored)], "lacks 'image_id'"),
        (["--coco", str(path), "--predictions", str(small)], "masks must be at the ground truth's size"),
        (["--coco", str(path), "--predictions", str(unscored), "--max-dets", "0"], "positive"),
    ]
    for args, message in cases:
        assert main(["eval", "automatic", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
