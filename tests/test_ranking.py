"""rank-unlabelled: uncertainty and rarity scores worked out by hand, on a stand-in model whose probabilities are
chosen per image, then the real path on a tiny SegFormer."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from support.images import save_image

from hf_segformer.data.preflight import DataReport, SplitReport
from hf_segformer.inference.ranking import (
    class_presence,
    image_score,
    load_class_frequencies,
    pixel_uncertainty,
    rank_unlabelled,
    rarity_weights,
)

LN2_OVER_LN3 = math.log(2) / math.log(3)  # normalised entropy of (½, ½, 0) among 3 classes
ID2LABEL = {0: "bg", 1: "road", 2: "rare"}
THIRD = 1 / 3
# per image (keyed by its red value), class probabilities on a 2×2 logits grid
PROBABILITIES = {
    10: [[(1, 0, 0)] * 2] * 2,  # a: sure background
    20: [[(0.5, 0.5, 0)] * 2] * 2,  # b: background or road
    30: [[(0.5, 0, 0.5)] * 2] * 2,  # c: background or the rare class
    40: [[(THIRD, THIRD, THIRD)] * 2, [(1, 0, 0)] * 2],  # d: half the pixels undecided among all three
}


class TableSegmenter:
    """Logits log p: the softmax gives back exactly the probabilities of PROBABILITIES for the image's red value."""

    id2label = ID2LABEL
    num_labels = 3

    def logits(self, images):
        for image in images:
            p = np.asarray(PROBABILITIES[int(np.asarray(image)[0, 0, 0])], dtype=np.float64).transpose(2, 0, 1)
            yield torch.from_numpy(np.where(p > 0, np.log(np.maximum(p, 1e-300)), -1e4).astype(np.float32))


def test_uncertainty_of_worked_pixels():
    probabilities = torch.tensor([[0.5, 1.0, 0.7], [0.5, 0.0, 0.2], [0.0, 0.0, 0.1]])[:, None, :]  # 3 pixels
    entropy = pixel_uncertainty(probabilities, "entropy")[0]
    # (½, ½, 0): ln 2 / ln 3; (1, 0, 0): 0; (.7, .2, .1): (.249672 + .321888 + .230259) / 1.098612 = .729847
    assert entropy.tolist() == pytest.approx([LN2_OVER_LN3, 0.0, 0.729847], abs=1e-6)
    assert pixel_uncertainty(probabilities, "margin")[0].tolist() == pytest.approx([1.0, 0.0, 0.5])  # 1 - (top1 - top2)
    assert pixel_uncertainty(torch.full((4, 1, 1), 0.25), "entropy").item() == pytest.approx(1.0)
    assert class_presence(probabilities).tolist() == pytest.approx([1.0, 0.5, 0.1])


def test_rarity_weights_and_score_of_a_worked_image():
    # inverse frequencies 1/.9, 1/.1 = 1.111, 10 → normalised .1, .9 (counts or shares alike)
    assert rarity_weights([0.9, 0.1]).tolist() == pytest.approx([0.1, 0.9])
    assert rarity_weights([900, 100]).tolist() == pytest.approx([0.1, 0.9])
    # presence (1, .5): rarity .1 + .45 = .55; score .5 × (1 + .55) = .775
    assert image_score(0.5, np.array([1.0, 0.5]), np.array([0.1, 0.9])) == pytest.approx((0.775, 0.55))
    assert rarity_weights([1.0, 0.0])[1] == pytest.approx(1 / (1 + 1e-4))  # unseen class: floored at 1e-4


def test_class_frequencies_from_a_class_histogram_a_mapping_or_a_list(tmp_path):
    DataReport(3, 255, ID2LABEL, {"train": SplitReport(4, [600, 300, 100, 5]),
                                  "validation": SplitReport(1, [1, 1, 1, 0])}).save(tmp_path)
    assert load_class_frequencies(tmp_path / "class_histogram.json", ID2LABEL).tolist() == [600, 300, 100]
    assert load_class_frequencies({"bg": 60, "rare": 10, 1: 30}, ID2LABEL).tolist() == [60, 30, 10]
    with pytest.raises(Exception, match="2 numbers for a model of 3 classes"):
        load_class_frequencies([1, 2], ID2LABEL)


@pytest.fixture
def pool(tmp_path):
    (tmp_path / "pool").mkdir()
    for name, red in (("a", 10), ("b", 20), ("c", 30), ("d", 40)):
        Image.fromarray(np.full((4, 4, 3), (red, 0, 0), dtype=np.uint8)).save(tmp_path / "pool" / f"{name}.png")
    return tmp_path / "pool"


def test_rare_classes_lift_an_equally_uncertain_image_and_the_outputs_are_written(pool, tmp_path):
    # frequencies .6 / .3 / .1 → weights 1/9, 2/9, 6/9. Presence and rarity per image:
    #   a (1, 0, 0)        rarity 1/9           u 0             score 0
    #   b (½, ½, 0)        (1/9 + 2/9)/2 = 1/6  u ln2/ln3       score u · 7/6   = .73608
    #   c (½, 0, ½)        (1/9 + 6/9)/2 = 7/18 u ln2/ln3       score u · 25/18 = .87629
    #   d (1, ⅓, ⅓)        1/9 + 8/27 = 11/27   u (1 + 1 + 0 + 0)/4 = ½  score ½ · 38/27 = .70370
    ranked = rank_unlabelled(TableSegmenter(), pool, top_k=2, out_dir=tmp_path / "ranked",
                             class_frequencies=[0.6, 0.3, 0.1], export="label-studio", model_version="v1")
    assert [r.image for r in ranked] == ["c.png", "b.png", "d.png", "a.png"]
    assert [r.score for r in ranked] == pytest.approx([LN2_OVER_LN3 * 25 / 18, LN2_OVER_LN3 * 7 / 6, 19 / 27, 0],
                                                      abs=1e-5)
    assert [r.rarity for r in ranked] == pytest.approx([7 / 18, 1 / 6, 11 / 27, 1 / 9], abs=1e-6)

    out = tmp_path / "ranked"
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert [(row["rank"], row["image"]) for row in rows] == [("1", "c.png"), ("2", "b.png"), ("3", "d.png"),
                                                             ("4", "a.png")]
    settings = json.loads((out / "ranking.json").read_text())["settings"]
    assert settings["rarity_weights"] == pytest.approx({"bg": 1 / 9, "road": 2 / 9, "rare": 6 / 9})
    assert Image.open(out / "top.png").size[1] > 2 * 160  # two rows of tiles
    tasks = json.loads((out / "top_label-studio.json").read_text())
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=c.png", "/data/local-files/?d=b.png"]
    assert [t["predictions"][0]["score"] for t in tasks] == pytest.approx([1 - LN2_OVER_LN3] * 2, abs=1e-5)
    assert all(t["predictions"][0]["model_version"] == "v1" for t in tasks)


def test_without_rarity_weight_equal_uncertainty_ties_in_name_order(pool):
    ranked = rank_unlabelled(TableSegmenter(), pool, top_k=4, rarity_weight=0.0, class_frequencies=[0.6, 0.3, 0.1])
    assert [r.image for r in ranked] == ["b.png", "c.png", "d.png", "a.png"]
    assert [r.score for r in ranked] == pytest.approx([LN2_OVER_LN3, LN2_OVER_LN3, 0.5, 0.0], abs=1e-5)


def test_a_saved_model_ranks_a_folder_uses_its_class_histogram_and_exports_the_top(saved_model, tmp_path):
    model = saved_model({0: "background", 1: "road", 2: "car"})
    DataReport(3, 255, {0: "background", 1: "road", 2: "car"}, {"train": SplitReport(2, [80, 15, 5, 0])}).save(model)
    for i in range(3):
        save_image(tmp_path / "photos" / f"{i}.png", size=(40, 24), seed=i)
    ranked = rank_unlabelled(str(model), [str(tmp_path / "photos")], top_k=2, out_dir=tmp_path / "ranked",
                             export="cvat-mask", batch_size=2)
    assert len(ranked) == 3 and [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    settings = json.loads((tmp_path / "ranked/ranking.json").read_text())["settings"]
    assert settings["class_frequencies_from"].endswith("class_histogram.json")
    import zipfile

    with zipfile.ZipFile(tmp_path / "ranked/top_cvat-mask.zip") as archive:
        listed = archive.read("ImageSets/Segmentation/default.txt").decode().split()
    assert listed == [r.image.removesuffix(".png") for r in ranked[:2]]
