"""The labeling round trip: annotation-tool exports in (importer.py), a model's masks back out as pre-annotations
(preannotations.py, predict_export.py), and the unlabelled images most worth labelling next (ranking.py).

One module per tool format: cvat_mask.py, label_studio.py (with brush_rle.py, Label Studio's own RLE),
coco_format.py (on top of hf_segformer.coco). layout.py writes the data_dir; commands.py holds the CLI entries.
"""
