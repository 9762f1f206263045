"""Label Studio's brush RLE on masks whose packed bytes are worked out bit by bit."""

from __future__ import annotations

import numpy as np
import pytest

from hf_segformer.data.annotations import brush_rle
from hf_segformer.errors import DataError

HEADER_24_WORDS = [0, 0, 0, 24]  # 32-bit word count, most significant byte first


def test_a_2x3_region_encodes_to_the_bytes_worked_out_by_hand():
    # Row-major pixels 0 1 1 / 1 1 0, four RGBA words each (255 inside): runs of 4×0, 16×255, 4×0.
    # Bits after the 32-bit count 24:
    #   00111                 word size 8 - 1
    #   0010 0011 0111 1111   run-length field sizes 3, 4, 8, 16 (each - 1)
    #   1 00 011 00000000     repeat, field 0 (3 bits), length 4 - 1, word 0
    #   1 01 1111 11111111    repeat, field 1 (4 bits), length 16 - 1, word 255
    #   1 00 011 00000000     repeat, field 0, length 4 - 1, word 0
    # = 00111001 00011011 11111100 01100000 00010111 11111111 11100011 00000000 (64 bits, no padding needed)
    mask = np.array([[0, 1, 1], [1, 1, 0]], dtype=bool)
    rle = brush_rle.encode_mask(mask)
    assert rle == HEADER_24_WORDS + [0b00111001, 0b00011011, 0b11111100, 0b01100000, 0b00010111, 0b11111111,
                                     0b11100011, 0b00000000]
    np.testing.assert_array_equal(brush_rle.decode_mask(rle, width=3, height=2), mask)


def test_literal_chunks_and_faint_alpha_decode_as_the_editor_reads_them():
    # 8 words = 2 pixels. Bits after the count 8 and the same 21-bit header as above:
    #   0 00 011 + 00000000 00000000 00000000 00000001   literal, 4 words: pixel 0 is (0, 0, 0, alpha 1)
    #   1 00 011 + 00000000                              repeat 4 × 0: pixel 1 is transparent
    #   then 7 zero bits to the byte boundary (105 bits → 14 bytes)
    rle = [0, 0, 0, 8, 57, 27, 248, 96, 0, 0, 0, 49, 128, 0]
    np.testing.assert_array_equal(brush_rle.decode(rle), [0, 0, 0, 1, 0, 0, 0, 0])
    # any non-zero alpha is inside, as the editor tests `data[i * 4 + 3]`
    np.testing.assert_array_equal(brush_rle.decode_mask(rle, width=2, height=1), [[True, False]])


def test_runs_longer_than_the_widest_field_are_split_and_the_round_trip_is_exact():
    # 300×300 pixels all inside: 360 000 words of 255 → five full 65 536-word chunks and one of 32 320.
    mask = np.ones((300, 300), dtype=bool)
    rle = brush_rle.encode_mask(mask)
    chunk_bits = 1 + 2 + 16 + 8
    assert len(rle) == -(-(32 + 21 + 6 * chunk_bits) // 8)
    assert brush_rle.decode_mask(rle, 300, 300).all()
    rng = np.random.default_rng(0)
    for _ in range(20):
        height, width = rng.integers(1, 30, 2)
        random_mask = rng.random((height, width)) < rng.random()
        np.testing.assert_array_equal(brush_rle.decode_mask(brush_rle.encode_mask(random_mask), width, height),
                                      random_mask)
    words = rng.integers(0, 256, 50)  # single words use literal chunks of one
    np.testing.assert_array_equal(brush_rle.decode(brush_rle.encode(words)), words)


def test_a_cut_or_mis_sized_rle_is_an_error_naming_the_region():
    rle = brush_rle.encode_mask(np.ones((2, 3), dtype=bool))
    with pytest.raises(DataError, match="task 4, result r1: the brush RLE ends in the middle"):
        brush_rle.decode(rle[:6], "task 4, result r1")
    with pytest.raises(DataError, match=r"original_width × original_height × 4 = 4 × 2 × 4 = 32"):
        brush_rle.decode_mask(rle, width=4, height=2, name="task 4")
    with pytest.raises(DataError, match="byte values"):
        brush_rle.decode([0, 300], "task 4")
