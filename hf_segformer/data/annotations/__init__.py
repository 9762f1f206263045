"""Annotation tools in and out: a tool's export → a data_dir (importer.py, `hf-segformer import-annotations`), and
class-id masks → pre-annotations the tool imports (exporter.py, used by `predict --export` and `rank-unlabelled`).

One module per tool format, reader and writer together: cvat_mask.py, label_studio.py (with brush_rle.py, Label
Studio's own RLE), coco_format.py (on top of data/coco.py). layout.py writes the data_dir; sources.py finds the
images an export names and unpacks zips; preannotations.py holds the types the writers share.
"""
