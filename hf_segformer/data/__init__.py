"""Data: image/mask folders, Hub, save_to_disk and streamed datasets; labels, images, transforms; the pre-flight check and its doctor; synthetic data; annotation-tool and COCO converters."""
