# Copyright the hf-segformer authors. Licensed under the Apache License, Version 2.0.
"""Mean IoU as an `evaluate` module, computed from confusion matrices (hf-segformer's metric core).

A drop-in for `evaluate.load("mean_iou")` that works offline: `evaluate.load(<this folder>)`.
"""

import datasets
import evaluate
import numpy as np

from hf_segformer.evaluation.metrics import confusion_from_arrays, metrics_from_confusion

_DESCRIPTION = """
IoU (Jaccard index) is the area of overlap between the predicted segmentation and the ground truth
divided by the area of their union. Mean IoU averages it over the classes present in the prediction or
the reference. This module has the arguments and results of `evaluate`'s `mean_iou` and adds Dice and
frequency-weighted IoU. Each prediction/reference pair is counted into a (num_labels + 1)² confusion
matrix (the extra row/column holds values outside [0, num_labels), which count toward no class area),
so memory does not grow with the image size.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted segmentation maps, each of shape (height, width); sizes may differ between images.
    references (`List[ndarray]`): ground-truth maps, each of the shape of its prediction.
    num_labels (`int`): number of classes.
    ignore_index (`int`): reference value that is not a class; those pixels are left out (e.g. 255).
    nan_to_num (`int`, *optional*): replaces NaN (classes absent from both prediction and reference) in every result.
    label_map (`dict`, *optional*): {old_id: new_id} applied to the references entry by entry, as in `mean_iou`.
    reduce_labels (`bool`, *optional*, defaults to `False`): after label_map, reference 0 becomes 255 and
        every other value k becomes k - 1 (255 stays 255), as for ADE20k.
Returns:
    `Dict[str, float | ndarray]`:
        mean_iou, mean_accuracy, overall_accuracy, per_category_iou, per_category_accuracy (as `mean_iou`),
        mean_dice, per_category_dice (2·TP / (label + prediction area)) and frequency_weighted_iou
        (IoU weighted by each class's share of the reference pixels).
Examples:
    >>> import numpy as np, evaluate
    >>> from hf_segformer.metrics import MEAN_IOU_MODULE_PATH
    >>> mean_iou = evaluate.load(MEAN_IOU_MODULE_PATH)
    >>> predicted = np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])
    >>> ground_truth = np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])
    >>> results = mean_iou.compute(predictions=[predicted], references=[ground_truth], num_labels=10, ignore_index=255)
    >>> print(round(float(results["mean_iou"]), 4), round(float(results["overall_accuracy"]), 4))
    0.38 0.5
"""

_CITATION = """\
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
author = {{MMSegmentation Contributors}},
license = {Apache-2.0},
month = {7},
title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
url = {https://github.com/open-mmlab/mmsegmentation},
year = {2020}
}"""

RESULT_KEYS = (
    "mean_iou",
    "mean_accuracy",
    "overall_accuracy",
    "per_category_iou",
    "per_category_accuracy",
    "mean_dice",
    "per_category_dice",
    "frequency_weighted_iou",
)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    # int32 (evaluate's mean_iou uses uint16): negative ignore values such as -1 are accepted too.
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                }
            ),
            reference_urls=[
                "https://github.com/open-mmlab/mmsegmentation/blob/71c201b1813267d78764f306a297ca717827c4bf/mmseg/core/evaluation/metrics.py"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num=None,
        label_map=None,
        reduce_labels: bool = False,
    ):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
        if int(num_labels) < 1:
            raise ValueError(f"num_labels must be at least 1; got {num_labels}.")
        num_labels = int(num_labels)
        confusion = np.zeros((num_labels + 1, num_labels + 1), dtype=np.int64)
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            confusion += confusion_from_arrays(
                prediction, reference, num_labels, ignore_index, label_map, reduce_labels, index=index
            )
        results = metrics_from_confusion(confusion, nan_to_num, outside_bin=True)
        return {key: results[key] for key in RESULT_KEYS}
