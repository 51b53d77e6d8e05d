"""Reward maps against small hand-computed maps, pooling, storage encoding and the training filter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srum_jobs.config import RewardConfig
from srum_jobs.records import Box, GlobalJudgment, RegionJudgment, RewardRecord
from srum_jobs.rewards import (RewardMapError, build_reward_map, check_boxes, decode_map, encode_map, map_checksum,
                               pool_to_grid, reward_map_from_record, training_filter)

NAN = float("nan")


def ref(boxes, scores, g, h, w, **kw):
    return build_reward_map(boxes, scores, g, h, w, mode="reference", **kw)


def signed(boxes, scores, g, h, w, **kw):
    return build_reward_map(boxes, scores, g, h, w, mode="signed", **kw)


# --------------------------------------------------------------------------------------- reference


def test_reference_hand_computed_with_overlap():
    # 4x5 image; box A (x 0..2, y 0..2) s=0.6 -> 0.8; box B (x 1..4, y 1..3) s=0.2 -> 0.6; overlap keeps the max.
    m = ref([(0, 0, 2, 2), (1, 1, 4, 3)], [0.6, 0.2], 1.0, 4, 5)
    want = np.array([[0.8, 0.8, 0.5, 0.5, 0.5],
                     [0.8, 0.8, 0.6, 0.6, 0.5],
                     [0.5, 0.6, 0.6, 0.6, 0.5],
                     [0.5, 0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(m.pixels, want, atol=1e-7)
    assert m.alpha == 1.0 and m.boxes_used == 2 and m.skipped_boxes == 0


def test_reference_global_factor_and_low_region_score():
    # g = 0.5 -> factor 0.75; a region scored -0.8 -> 0.1 < neutral 0.5, so the background value stays.
    m = ref([(1, 1, 3, 3), (2, 2, 4, 4)], [0.6, -0.8], 0.5, 5, 6)
    want = np.full((5, 6), 0.5 * 0.75, dtype=np.float32)
    want[1:3, 1:3] = 0.8 * 0.75
    np.testing.assert_allclose(m.pixels, want, atol=1e-7)


def test_reference_no_regions_is_neutral_times_global():
    np.testing.assert_allclose(ref([], [], -0.5, 3, 4).pixels, np.full((3, 4), 0.5 * 0.25), atol=1e-7)
    # a missing global score counts as neutral (0 -> factor 0.5); use_global=False leaves the factor out
    np.testing.assert_allclose(ref([], [], None, 2, 2).pixels, np.full((2, 2), 0.25), atol=1e-7)
    m = ref([(0, 0, 1, 1)], [1.0], -1.0, 2, 2, use_global=False)
    np.testing.assert_allclose(m.pixels, [[1.0, 0.5], [0.5, 0.5]], atol=1e-7)
    assert m.alpha == 1.0


# ------------------------------------------------------------------------------------------ signed


def test_signed_hand_computed_overlap_largest_magnitude_wins():
    # A (x0..3, y0..2) s=0.3; B (x2..5, y1..3) s=-0.7; C (x0..1, y0..1) s=0.9. Overlap A/B -> -0.7 (|.7| > .3).
    m = signed([(0, 0, 3, 2), (2, 1, 5, 3), (0, 0, 1, 1)], [0.3, -0.7, 0.9], 0.2, 4, 5)
    want = np.array([[0.9, 0.3, 0.3, 0.0, 0.0],
                     [0.3, 0.3, -0.7, -0.7, -0.7],
                     [0.0, 0.0, -0.7, -0.7, -0.7],
                     [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(m.pixels, want, atol=1e-7)
    assert m.alpha == pytest.approx(0.6)          # (g + 1) / 2, kept separate in signed mode
    assert signed([], [], 0.2, 2, 2, use_global=False).alpha == 1.0


def test_signed_tie_in_magnitude_goes_to_the_penalty_in_any_order():
    for boxes, scores in (([(0, 0, 2, 2), (1, 1, 3, 3)], [0.5, -0.5]), ([(1, 1, 3, 3), (0, 0, 2, 2)], [-0.5, 0.5])):
        m = signed(boxes, scores, 0.0, 3, 3)
        assert m.pixels[1, 1] == -0.5


# ------------------------------------------------------------------------------------------ sparse


def test_sparse_is_a_thresholded_whole_image_value():
    assert build_reward_map([(0, 0, 1, 1)], [1.0], 0.3, 2, 3, mode="sparse").pixels.tolist() == [[1.0] * 3] * 2
    assert build_reward_map([], [], -0.1, 2, 2, mode="sparse").pixels.max() == 0.0
    assert build_reward_map([], [], 0.3, 2, 2, mode="sparse", sparse_threshold=0.5).pixels.max() == 0.0
    assert build_reward_map([], [], None, 2, 2, mode="sparse").pixels.max() == 0.0
    assert build_reward_map([], [], 0.9, 2, 2, mode="sparse").alpha == 1.0


# ----------------------------------------------------------------------------- clamping and skipping


def test_boxes_clamped_and_fractional_edges_cover_touched_pixels():
    m = ref([(-5, -5, 1.2, 1.0), (2.5, 2.5, 99, 99)], [1.0, 1.0], 1.0, 4, 4)
    want = np.full((4, 4), 0.5, dtype=np.float32)
    want[0:1, 0:2] = 1.0       # x 0..1.2 touches columns 0 and 1
    want[2:4, 2:4] = 1.0       # 2.5 floors to 2; 99 clamps to 4
    np.testing.assert_allclose(m.pixels, want)
    assert m.skipped_boxes == 0


def test_bad_boxes_skipped_and_counted_by_reason():
    boxes = [(0, 0, 2, 2),          # fine
             (3, 0, 1, 2),          # inverted x
             (0, 3, 2, 1),          # inverted y
             (1, 1, 1, 3),          # zero width
             (10, 10, 20, 20),      # outside the image
             (NAN, 0, 1, 1),        # NaN
             (0, 0, float("inf"), 1),
             ("a", 0, 1, 1),        # non-numeric
             (None, 0, 1, 1),
             (0, 0, 1),             # not 4 numbers
             (True, 0, 1, 1),
             (0, 0, 3, 3)]          # fine but unscored
    scores = [0.0] * 11 + [None]
    m = ref(boxes, scores, 1.0, 4, 4)
    assert m.skipped == {"non_numeric": 4, "non_finite": 2, "inverted": 2, "empty": 2, "unscored": 1}
    assert m.boxes_used == 1 and m.skipped_boxes == 11
    np.testing.assert_allclose(m.pixels, np.full((4, 4), 0.5))   # s=0 -> 0.5: no change anywhere


def test_check_boxes_numeric_array_fast_path_matches_list_path():
    arr = np.array([[0, 0, 2, 2], [3, 0, 1, 2], [NAN, 0, 1, 1], [-1, -1, 9, 9]], dtype=np.float32)
    a, b = check_boxes(arr, 4, 4), check_boxes(arr.tolist(), 4, 4)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.pixels, [[0, 0, 2, 2], [0, 0, 4, 4]])
    assert a.skipped == b.skipped and list(a.index) == [0, 3]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(RewardMapError, match="mode"):
        build_reward_map([], [], 0.0, 2, 2, mode="dense")
    with pytest.raises(RewardMapError, match="2 boxes but 1 scores"):
        ref([(0, 0, 1, 1), (0, 0, 1, 1)], [0.1], 0.0, 2, 2)
    with pytest.raises(RewardMapError, match="positive"):
        ref([], [], 0.0, 0, 2)


# ----------------------------------------------------------------------------------------- pooling


def test_pooling_averages_cells_not_a_sample():
    m = ref([(0, 0, 1, 1)], [1.0], 1.0, 4, 4)          # one pixel at 1.0, rest 0.5
    np.testing.assert_allclose(m.pooled((2, 2)), [[0.625, 0.5], [0.5, 0.5]], atol=1e-7)
    np.testing.assert_allclose(m.tokens((2, 2)), [0.625, 0.5, 0.5, 0.5], atol=1e-7)   # row-major tokens


def test_pooling_non_dividing_grid_is_area_weighted():
    # 1x3 image, values [1, 0, 0] (signed), pooled to 1x2: cell 0 covers pixels 0 and half of 1 -> (1 + 0) / 1.5
    m = signed([(0, 0, 1, 1)], [1.0], 1.0, 1, 3)
    np.testing.assert_allclose(m.pooled((1, 2)), [[1 / 1.5, 0.0]], atol=1e-6)
    np.testing.assert_allclose(pool_to_grid(m.pixels, (1, 2)), [[1 / 1.5, 0.0]], atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 12), st.integers(1, 12),
       st.lists(st.tuples(st.floats(-5, 45), st.floats(-5, 45), st.floats(-5, 45), st.floats(-5, 45),
                          st.floats(-1, 1)), max_size=6),
       st.sampled_from(["reference", "signed"]))
def test_property_piecewise_pooling_equals_dense_pooling_and_plain_loop(h, w, gh, gw, boxes, mode):
    m = build_reward_map([b[:4] for b in boxes], [b[4] for b in boxes], 0.3, h, w, mode=mode)
    # exact area-weighted pooling from the compact form equals pooling the dense pixels
    np.testing.assert_allclose(m.pooled((gh, gw)), pool_to_grid(m.pixels, (gh, gw)), atol=1e-5)
    assert m.pixels.shape == (h, w)
    if mode == "reference":
        # ... and the dense map equals the plain per-box slice-and-max loop
        plain = np.full((h, w), 0.5)
        for x0, y0, x1, y1, s in boxes:
            if x1 < x0 or y1 < y0:
                continue
            cx0, cy0 = int(np.floor(np.clip(x0, 0, w))), int(np.floor(np.clip(y0, 0, h)))
            cx1, cy1 = int(np.ceil(np.clip(x1, 0, w))), int(np.ceil(np.clip(y1, 0, h)))
            if np.clip(x1, 0, w) <= np.clip(x0, 0, w) or np.clip(y1, 0, h) <= np.clip(y0, 0, h):
                continue
            plain[cy0:cy1, cx0:cx1] = np.maximum(plain[cy0:cy1, cx0:cx1], (s + 1) / 2)
        np.testing.assert_allclose(m.pixels, plain * 0.65, atol=1e-6)


# ---------------------------------------------------------------------------------- records, storage


def _record(regions, g=0.4, g_parsed=True, regions_parsed=True, width=6, height=4):
    rj = [RegionJudgment(region_id=i, box=Box(x0=b[0], y0=b[1], x1=b[2], y1=b[3]), score=s, parsed=s is not None)
          for i, (b, s) in enumerate(regions, start=1)]
    return RewardRecord(prompt_id="p1", prompt="a red circle", category="color", candidate_index=0, seed=1,
                        image_key="k.png", image_sha256="0" * 64, width=width, height=height, regions=rj,
                        global_judgment=GlobalJudgment(score=g, parsed=g_parsed), regions_parsed=regions_parsed)


def test_map_from_record_uses_config_mode_and_skips_unparsed_regions():
    rec = _record([((0, 0, 2, 2), 0.6), ((2, 0, 4, 2), None)])
    m = reward_map_from_record(rec, RewardConfig(mode="reference"))
    assert m.pixels.shape == (4, 6) and m.skipped["unscored"] == 1
    assert m.pixels[0, 0] == pytest.approx(0.8 * 0.7) and m.pixels[0, 3] == pytest.approx(0.5 * 0.7)
    s = reward_map_from_record(rec, RewardConfig(mode="signed"))
    assert s.pixels[0, 0] == pytest.approx(0.6) and s.alpha == pytest.approx(0.7)
    assert reward_map_from_record(rec, RewardConfig(mode="signed", use_global=False)).alpha == 1.0


def test_corrective_map_is_flat_except_penalised_regions():
    # 4x6 image: praise (0.9), a surplus copy (-0.6) overlapping a blob (-0.7), a misplaced object (0.0)
    m = build_reward_map([[0, 0, 2, 2], [3, 0, 5, 2], [4, 1, 6, 3], [0, 2, 2, 4]], [0.9, -0.6, -0.7, 0.0], 0.5, 4, 6,
                         mode="corrective")
    expected = np.ones((4, 6), np.float32)
    expected[0:2, 3:5] = -0.6
    expected[1:3, 4:6] = -0.7           # the most negative region wins where they overlap
    assert np.allclose(m.pixels, expected) and m.alpha == pytest.approx(0.75)
    assert build_reward_map([], [], -1.0, 4, 6, mode="corrective").pixels.min() == 1.0
    assert build_reward_map([[0, 0, 2, 2]], [-0.5], 0.5, 4, 6, mode="corrective", use_global=False).alpha == 1.0


def test_sample_map_is_one_value_per_image_with_the_global_factor():
    m = build_reward_map([[0, 0, 2, 2]], [-1.0], 0.2, 4, 6, mode="sample")
    assert np.all(m.pixels == 1.0) and m.alpha == pytest.approx(0.6)
    assert build_reward_map([], [], None, 4, 6, mode="sample").alpha == pytest.approx(0.5)   # unscored: neutral
    assert build_reward_map([], [], 0.2, 4, 6, mode="sample", use_global=False).alpha == 1.0


def test_regions_the_verifier_rejected_count_only_with_score_unverified():
    rec = _record([((0, 0, 2, 2), 0.9), ((3, 0, 5, 2), -0.6)])
    rejected = rec.model_copy(update={"regions": [rec.regions[0], rec.regions[1].model_copy(update={"verified": False})]})
    dropped = reward_map_from_record(rejected, RewardConfig(mode="corrective"))
    assert dropped.boxes_used == 1 and dropped.pixels.min() == 1.0
    scored = reward_map_from_record(rejected, RewardConfig(mode="corrective", score_unverified=True))
    assert scored.boxes_used == 2 and scored.pixels[0, 3] == pytest.approx(-0.6)
    assert reward_map_from_record(rec, RewardConfig(mode="corrective")).boxes_used == 2   # verified None: counts


def test_encode_decode_roundtrip_is_exact_and_compact():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1024, size=(20, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 300, size=(20, 2))], axis=1)
    m = signed(boxes, rng.uniform(-1, 1, 20).tolist(), 0.1, 1024, 1024)
    blob = encode_map(m)
    assert len(blob) < 16_000                      # vs 2 MB for float16 pixels
    d = decode_map(blob)
    np.testing.assert_array_equal(d.pixels, m.pixels)
    assert (d.alpha, d.mode, d.skipped, d.boxes_used) == (m.alpha, m.mode, m.skipped, m.boxes_used)
    assert encode_map(d) == blob and len(map_checksum(blob)) == 64


def test_decode_rejects_corruption_naming_the_source():
    blob = bytearray(encode_map(ref([(0, 0, 1, 1)], [0.5], 0.0, 2, 2)))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(RewardMapError, match="maps/x.bin.*checksum"):
        decode_map(bytes(blob), source="maps/x.bin")
    with pytest.raises(RewardMapError, match="not an encoded reward map"):
        decode_map(b"\x93NUMPY" + b"\0" * 64)
    with pytest.raises(RewardMapError, match="checksum"):
        decode_map(bytes(blob[:-5]))


@pytest.mark.parametrize("kw, rec_kw, use, reason", [
    ({}, {}, True, None),
    ({}, {"g_parsed": False, "g": 0.0}, False, "global_unparsed"),
    ({}, {"regions_parsed": False}, False, "regions_unparsed"),
    ({}, {"g": 0.0}, False, "zero_global"),
    ({"drop_zero_global": False}, {"g": 0.0}, True, None),
    ({"drop_unparsed": False}, {"g_parsed": False, "g": 0.3}, True, None),
    ({"drop_unparsed": False}, {"g_parsed": False, "g": 0.0}, True, None),   # unparsed default is not "a zero"
    ({"min_global_score": 0.0}, {"g": -0.3}, False, "low_global"),
    ({"min_global_score": 0.0}, {"g": 0.3}, True, None),
    ({"min_global_score": 0.3}, {"g": 0.3}, False, "low_global"),              # "<= floor" is dropped
    ({"min_global_score": 0.0, "drop_unparsed": False}, {"g_parsed": False, "g": 0.0}, True, None),
])
def test_training_filter(kw, rec_kw, use, reason):
    assert training_filter(_record([], **rec_kw), RewardConfig(**kw)) == (use, reason)
