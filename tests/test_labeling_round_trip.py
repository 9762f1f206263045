"""The labeling loop end to end: a Label Studio export → import → one training step → rank-unlabelled → predict →
pre-annotations for each tool → imported back, giving exactly the predicted masks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from support.images import read_mask, save_image

from hf_segformer.commands.predict import main as predict
from hf_segformer.commands.rank_unlabelled import main as rank_unlabelled
from hf_segformer.data.annotations import brush_rle
from hf_segformer.data.annotations.importer import import_annotations
from hf_segformer.data.synthetic import SYNTHETIC_ID2LABEL, make_sample
from hf_segformer.errors import RecipeError

CONFIG = """<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">
<Label value="disc" background="#E6194B"/><Label value="square" background="#3CB44B"/>
<Label value="triangle" background="#4363D8"/></BrushLabels></View>"""


def write_label_studio_export(store: Path, path: Path, seeds: list[int]) -> dict[str, np.ndarray]:
    """Synthetic shapes images uploaded to Label Studio and painted with the brush, one region per shape class."""
    tasks, masks = [], {}
    for seed in seeds:
        image, mask = make_sample(seed, size=32)
        name = f"shapes_{seed}.png"
        image.save(store / name)
        masks[name] = np.asarray(mask)
        results = [{"id": f"{seed}-{c}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
                    "original_width": 32, "original_height": 32, "image_rotation": 0,
                    "value": {"format": "rle", "rle": brush_rle.encode_mask(masks[name] == c),
                              "brushlabels": [SYNTHETIC_ID2LABEL[c]]}}
                   for c in range(1, 4) if (masks[name] == c).any()]
        tasks.append({"id": seed, "data": {"image": f"/data/upload/1/0badcafe-{name}"},
                      "annotations": [{"id": seed, "result": results}]})
    path.write_text(json.dumps(tasks))
    return masks


def accept_predictions(path: Path) -> None:
    """What an annotator's 'accept' does in Label Studio: the prediction's result becomes the annotation."""
    tasks = json.loads(path.read_text())
    for number, task in enumerate(tasks):
        task["annotations"] = [{"id": number, "result": task["predictions"][0]["result"]}]
    path.write_text(json.dumps(tasks))


def round_trip_all_formats(tmp_path: Path, model: Path, store: Path, id2label: dict[int, str]) -> None:
    """`predict --export FORMAT` for each tool; each export, imported back, is the predicted masks pixel for pixel."""
    predictions = tmp_path / "predictions"
    for fmt, suffix in (("label-studio", ".json"), ("cvat-mask", ".zip"), ("coco", ".json")):
        exported = tmp_path / f"pre_{fmt}{suffix}"
        # the second and third runs find the masks there (resumed) and only export
        assert predict(["--model", str(model), "--inputs", str(store), "--predictions_dir", str(predictions),
                        "--export", fmt, "--export_path", str(exported)]) == 0
        predicted = {p.name: read_mask(p) for p in predictions.glob("*.png")}
        assert len(predicted) == len(list(store.glob("*.png")))
        assert len(set().union(*(np.unique(m).tolist() for m in predicted.values()))) >= 2, "predictions of one class"
        # COCO has no way to say "looked at, nothing there" but an image without annotations, which the import
        # keeps out by default (a task's not-yet-annotated images look the same): all-background predictions
        # need --keep_unannotated
        options = {"keep_unannotated": True} if fmt == "coco" else {}
        if fmt == "label-studio":
            accept_predictions(exported)
            options = {"label_config": str(exported.with_name(exported.stem + ".label_config.xml")),
                       "unlabelled": "background"}
        back = tmp_path / f"back_{fmt}"
        import_annotations(fmt, [exported], back, images=store, **options)
        assert json.loads((back / "id2label.json").read_text()) == {str(k): v for k, v in id2label.items()}
        for name, mask in predicted.items():
            np.testing.assert_array_equal(read_mask(back / "masks/train" / name), mask, err_msg=f"{fmt} {name}")


def test_label_studio_export_to_a_trained_model_and_back(tmp_path):
    from hf_segformer.training.arguments import parse_recipe
    from hf_segformer.training.run import main as train

    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "config.xml").write_text(CONFIG)
    truth = write_label_studio_export(store, tmp_path / "train.json", [0, 1, 2, 3])
    truth |= write_label_studio_export(store, tmp_path / "val.json", [4, 5])
    data = tmp_path / "data"
    import_annotations("label-studio", [f"train={tmp_path / 'train.json'}", f"validation={tmp_path / 'val.json'}"],
                       data, images=store, label_config=str(tmp_path / "config.xml"), unlabelled="background")
    assert json.loads((data / "id2label.json").read_text()) == {str(k): v for k, v in SYNTHETIC_ID2LABEL.items()}
    for name, mask in truth.items():  # the import is exact
        split = "train" if int(name[7]) < 4 else "validation"
        np.testing.assert_array_equal(read_mask(data / "masks" / split / name), mask)

    run = tmp_path / "run"
    train(*parse_recipe(["--data_dir", str(data), "--output_dir", str(run), "--model_variant", "b0",
                         "--crop_size", "32", "--eval_size", "32", "--train_scale", "64", "32", "--cat_max_ratio",
                         "1.0", "--per_device_train_batch_size", "2", "--max_steps", "1", "--eval_strategy", "no",
                         "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
                         "--allow_empty_classes", "true"]))  # a tiny import: not every class in train
    # which images next: the top 2 by the run's uncertainty, exported as pre-annotations to accept and import
    assert rank_unlabelled(["--model", str(run), "--inputs", str(store), "--top", "2", "--export", "label-studio",
                            "--out", str(tmp_path / "next_batch")]) == 0
    rows = list(csv.DictReader((tmp_path / "next_batch" / "ranking.csv").open()))
    assert len(rows) == 6 and [float(r["score"]) for r in rows] == sorted((float(r["score"]) for r in rows),
                                                                        reverse=True)
    top = tmp_path / "next_batch" / "top_label-studio.json"
    accept_predictions(top)
    import_annotations("label-studio", [top], tmp_path / "next_data", images=store, unlabelled="background",
                       label_config=str(top.with_name(top.stem + ".label_config.xml")))
    accepted = sorted(p.name for p in (tmp_path / "next_data" / "masks" / "train").glob("*.png"))
    assert accepted == sorted(r["image"].split("/")[-1] for r in rows[:2])
    round_trip_all_formats(tmp_path, run, store, SYNTHETIC_ID2LABEL)
    for name in accepted:  # the ranking's pre-annotations are the masks predict writes
        np.testing.assert_array_equal(read_mask(tmp_path / "next_data" / "masks" / "train" / name),
                                      read_mask(tmp_path / "predictions" / name), err_msg=name)


def test_varied_predictions_of_a_random_model_survive_every_format(tmp_path, saved_model):
    id2label = {0: "background", 1: "road", 2: "car", 3: "sign"}
    model = saved_model(id2label, seed=3)
    store = tmp_path / "store"
    for i in range(3):
        save_image(store / f"{i}.png", size=(56, 40), seed=i)
    round_trip_all_formats(tmp_path, model, store, id2label)
    present = set().union(*(np.unique(read_mask(p)).tolist() for p in (tmp_path / "predictions").glob("*.png")))
    assert len(present) >= 3, f"the random model predicts too few classes ({present}) for a telling round trip"


@pytest.mark.parametrize("fmt", ["label-studio", "coco"])
def test_predict_export_refuses_an_existing_file_unless_overwrite(tmp_path, saved_model, fmt):
    model = saved_model({0: "background", 1: "road"})
    save_image(tmp_path / "store/0.png", size=(32, 32))
    argv = ["--model", str(model), "--inputs", str(tmp_path / "store"), "--predictions_dir", str(tmp_path / "p"),
            "--export", fmt]
    assert predict(argv) == 0
    first = tmp_path / f"p_{fmt}.json"  # the default: next to the predictions folder
    stamp = first.stat().st_mtime_ns
    (tmp_path / "p/0.png").unlink()
    with pytest.raises(RecipeError, match=f"--export_path .*p_{fmt}.json already exists"):
        predict(argv)  # refused before predicting anything
    assert not (tmp_path / "p/0.png").exists() and first.stat().st_mtime_ns == stamp
    assert predict(argv + ["--overwrite_export", "true"]) == 0
    assert (tmp_path / "p/0.png").is_file() and first.stat().st_mtime_ns != stamp
