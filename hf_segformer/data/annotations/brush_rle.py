"""Label Studio's brush RLE: the `rle` list of a `brushlabels` result, decoded and encoded bit for bit.

Label Studio draws a brush region on a canvas of the image's natural size, reads its RGBA pixels (row by row,
4 bytes a pixel, every channel set to the alpha value) and packs them with the `@thi.ng/rle-pack` layout; the
`rle` list holds the packed bytes. The bits are read most significant first:

    32 bits  number of words (width × height × 4)
     5 bits  word size - 1                       (8-bit words: 7)
    4 × 4    the four run-length field sizes - 1  (3, 4, 8, 16 bits: 2, 3, 7, 15)
    then chunks until every word is filled:
     1 bit   1: a run of one repeated word, 0: literal words
     2 bits  which run-length field size follows
     n bits  chunk length - 1
     then one word (run) or chunk-length words (literal)

A pixel belongs to the region when its alpha byte (the 4th of its word quadruple) is non-zero, as the editor
itself tests when it draws a decoded region. `encode_mask` writes a region exactly as the editor exports one:
all four channels 255 inside, 0 outside, one repeat chunk per run (literal chunks of one word for runs of
one), zero bits up to the byte boundary (label-studio-converter adds a whole zero byte when the bits already end
on one; decoders stop at the word count, so both read the same).
"""

from __future__ import annotations

import numpy as np

from hf_segformer.errors import DataError

RUN_FIELD_SIZES = (3, 4, 8, 16)  # the editor's and label-studio-converter's choice
WORD_SIZE = 8
CHANNELS = 4  # RGBA
MAX_RUN = 1 << RUN_FIELD_SIZES[-1]


class _Bits:
    """Big-endian bit reader over a byte list, as a string of '0'/'1' (int(…, 2) does the arithmetic)."""

    def __init__(self, data: bytes, name: str):
        self.text = (np.unpackbits(np.frombuffer(data, dtype=np.uint8)) + ord("0")).tobytes().decode("ascii")
        self.position = 0
        self.name = name

    def read(self, count: int) -> int:
        end = self.position + count
        if end > len(self.text):
            raise DataError(f"{self.name}: the brush RLE ends in the middle of a chunk (after {len(self.text) // 8} "
                            "bytes); the export is cut short or the rle list was edited.")
        value = int(self.text[self.position : end], 2)
        self.position = end
        return value


def _as_bytes(rle: list[int] | bytes, name: str) -> bytes:
    if isinstance(rle, (bytes, bytearray)):
        return bytes(rle)
    if not isinstance(rle, list) or not all(isinstance(v, int) and 0 <= v <= 255 for v in rle):
        raise DataError(f"{name}: a brush 'rle' must be a list of byte values 0..255.")
    return bytes(rle)


def decode(rle: list[int] | bytes, name: str = "brush region") -> np.ndarray:
    """The packed words of a brush RLE, as a flat array (uint8 for 8-bit words, wider for wider words)."""
    bits = _Bits(_as_bytes(rle, name), name)
    count = bits.read(32)
    word_size = bits.read(5) + 1
    field_sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8 if word_size <= 8 else np.uint16 if word_size <= 16 else np.uint32)
    filled = 0
    while filled < count:
        repeated = bits.read(1)
        length = bits.read(field_sizes[bits.read(2)]) + 1
        if filled + length > count:
            raise DataError(f"{name}: a brush RLE chunk runs past the {count} words the header announces.")
        if repeated:
            out[filled : filled + length] = bits.read(word_size)
        else:
            for i in range(filled, filled + length):
                out[i] = bits.read(word_size)
        filled += length
    return out


def decode_mask(rle: list[int] | bytes, width: int, height: int, name: str = "brush region") -> np.ndarray:
    """A brush RLE of a width × height image → boolean H×W mask (alpha > 0)."""
    words = decode(rle, name)
    if words.size != width * height * CHANNELS:
        raise DataError(f"{name}: the brush RLE holds {words.size} values but original_width × original_height × 4 "
                        f"= {width} × {height} × 4 = {width * height * CHANNELS}; the region was drawn on an image "
                        "of another size.")
    return words.reshape(height, width, CHANNELS)[..., 3] > 0


def _pixel_runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, lengths) of the maximal runs of a 1-D array."""
    starts = np.flatnonzero(np.concatenate(([True], flat[1:] != flat[:-1])))
    lengths = np.diff(np.append(starts, flat.size))
    return flat[starts], lengths


def encode(values: np.ndarray) -> list[int]:
    """Pack 8-bit words (a flat array) into a brush RLE byte list."""
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise ValueError("brush RLE words are bytes: values must be in 0..255")
    pieces = [f"{flat.size:032b}", f"{WORD_SIZE - 1:05b}", "".join(f"{size - 1:04b}" for size in RUN_FIELD_SIZES)]
    if flat.size:
        for value, length in zip(*_pixel_runs(flat)):
            word = f"{int(value):08b}"
            if length == 1:
                pieces.append("0" + "00" + "0" * RUN_FIELD_SIZES[0] + word)
                continue
            while length > 0:
                chunk = min(int(length), MAX_RUN)
                field = next(i for i, size in enumerate(RUN_FIELD_SIZES) if chunk <= 1 << size)
                pieces.append(f"1{field:02b}{chunk - 1:0{RUN_FIELD_SIZES[field]}b}{word}")
                length -= chunk
    text = "".join(pieces)
    text += "0" * (-len(text) % 8)
    return list(np.packbits(np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0")).tolist())


def encode_mask(mask: np.ndarray) -> list[int]:
    """A boolean H×W region → the brush RLE Label Studio exports for it (RGBA, all channels 255 inside)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a brush region is a 2-D mask; got shape {mask.shape}")
    return encode(np.repeat(mask.reshape(-1).astype(bool).astype(np.uint8) * 255, CHANNELS))
