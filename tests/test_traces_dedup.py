"""Deduplication: exact copies (case and spacing aside), MinHash near-duplicates, determinism."""

from __future__ import annotations

import pytest

pytest.importorskip("datasketch")

from anydistill.traces.dedup import deduplicate, shingles  # noqa: E402

BASE = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers' "
    "market daily for $2 per fresh duck egg. How much in dollars does she make every day at "
    "the farmers' market?"
)
NEAR = BASE.replace("every morning", "each morning")  # one word changed in ~60
OTHER = (
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in "
    "total does it take?"
)
TEXTS = [BASE, OTHER, "  " + BASE.upper().replace(" ", "\n  "), NEAR, "Compute 2 + 3.", ""]


def test_exact_and_near_duplicates_are_found_and_distinct_texts_kept():
    result = deduplicate(TEXTS)
    assert result.kept == [0, 1, 4, 5]
    removed = {d.index: d for d in result.removed}
    assert sorted(removed) == [2, 3]
    assert (removed[2].kept, removed[2].kind, removed[2].similarity) == (0, "exact", 1.0)
    assert removed[3].kept == 0 and removed[3].kind == "near"
    assert 0.8 <= removed[3].similarity < 1.0


def test_results_are_deterministic_and_seeded():
    texts = [f"{BASE} Variant {i // 2}." for i in range(12)] + [OTHER] * 2
    first = deduplicate(texts, num_perm=64, seed=7)
    assert first == deduplicate(texts, num_perm=64, seed=7)
    assert first.kept == [0, 12]
    assert [d.kept for d in first.removed] == [0] * 11 + [12]
    # Row 3 copies row 2, which near dedup removed: it names row 0, where row 2 went.
    assert first.removed[2].kind == "near" and first.removed[2].similarity < 1.0


def test_threshold_and_exact_only():
    assert deduplicate([BASE, NEAR], near=False).kept == [0, 1]
    assert deduplicate([BASE, NEAR], threshold=0.98).kept == [0, 1]
    # Short problems differing in one number are different problems.
    assert deduplicate(["What is 2 + 3 ?", "What is 2 + 4 ?"]).kept == [0, 1]
    with pytest.raises(ValueError, match="threshold"):
        deduplicate(TEXTS, threshold=0)
    with pytest.raises(ValueError, match="too high for MinHash LSH"):
        deduplicate(TEXTS, threshold=0.99)


def test_shingles_of_short_texts():
    assert shingles("Two words", 3) == {"two words"}
    assert shingles("a b c d", 3) == {"a b c", "b c d"}
    assert shingles("   ", 3) == set()
