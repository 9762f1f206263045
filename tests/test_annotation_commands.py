"""The import-annotations and rank-unlabelled commands as a user calls them, and predict's --export options."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from support.images import save_image, save_mask

from hf_segformer.cli import main as hf_segformer
from hf_segformer.commands.import_annotations import main as import_annotations_command
from hf_segformer.commands.predict import ExportArguments
from hf_segformer.errors import DataError, RecipeError


def test_import_annotations_command_reads_a_cvat_zip_and_says_what_it_did(tmp_path, capsys):
    archive = tmp_path / "task.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("labelmap.txt", "background:0,0,0::\nroad:128,64,128::\n")
        zipped.writestr("ImageSets/Segmentation/default.txt", "a\nb\n")
        mask = save_mask(tmp_path / "a.png", np.array([[(0, 0, 0), (128, 64, 128)]] * 2), "RGB")
        zipped.write(mask, "SegmentationClass/a.png")
    save_image(tmp_path / "photos/a.jpg", size=(2, 2))
    save_image(tmp_path / "photos/b.jpg", size=(2, 2))
    argv = ["--format", "cvat-mask", "--src", str(archive), "--images", str(tmp_path / "photos"),
            "--out", str(tmp_path / "data")]
    assert hf_segformer(["import-annotations", *argv]) == 0
    printed = capsys.readouterr().out
    assert "Imported 1 annotated images" in printed and "train 1" in printed
    assert "background: 50.00% of pixels" in printed and "road: 50.00% of pixels" in printed
    assert "1 image(s) without annotations were kept out" in printed
    with pytest.raises(DataError, match="already exists"):
        import_annotations_command(argv)
    assert hf_segformer(["import-annotations", *argv]) == 2  # a user error: one line, exit status 2
    assert "already exists; choose a new output or pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        import_annotations_command(argv[:2] + ["--out", "x"])  # --src is required: argparse says so


def test_export_options_fit_next_to_predicts_own_options():
    from transformers import HfArgumentParser

    from hf_segformer.commands.inference_options import InferenceArguments
    from hf_segformer.commands.predict import PredictArguments

    parser = HfArgumentParser((InferenceArguments, PredictArguments, ExportArguments))  # no clashing option names
    _, predict_args, export_args = parser.parse_args_into_dataclasses(
        args=["--inputs", "x", "--predictions_dir", "out", "--export", "cvat-mask", "--background_class", "none"])
    assert export_args.export == "cvat-mask" and export_args.background() is None
    assert ExportArguments(background_class="2").background() == 2
    with pytest.raises(RecipeError, match="--export must be one of label-studio, cvat-mask, coco"):
        ExportArguments(export="yolo")


def test_rank_unlabelled_command_prints_the_ranking_and_writes_the_files(tmp_path, saved_model, capsys):
    model = saved_model({0: "background", 1: "road"})
    for i in range(3):
        save_image(tmp_path / "pool" / f"{i}.png", size=(30, 20), seed=i)
    assert hf_segformer(["rank-unlabelled", str(model), str(tmp_path / "pool"), "--top", "2", "--out",
                         str(tmp_path / "ranked"), "--export", "coco", "--method", "margin"]) == 0
    printed = capsys.readouterr().out
    assert "Ranked 3 images" in printed
    ranks = [line.split()[0] for line in printed.splitlines() if line.strip()[:1].isdigit()]
    assert ranks == ["1.", "2."]  # the top 2 of 3
    coco = json.loads((tmp_path / "ranked/top_coco.json").read_text())
    assert len(coco["images"]) == 2
    assert json.loads((tmp_path / "ranked/ranking.json").read_text())["settings"]["method"] == "margin"
