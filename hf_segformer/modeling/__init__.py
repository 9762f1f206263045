"""The model: SegFormer b0..b5 from config or a checkpoint, the decode head reordered (training) and folded (inference), token merging, synchronised BatchNorm."""
