"""bench/long_texts.py's pure parts: the token-length summary and the LC-Rec text for UniSRec items."""

import numpy as np

from bench.long_texts import lcrec_text_for, length_summary


def f(title, brand="", description="", categories=""):
    return {"title": title, "brand": brand, "categories": categories, "description": description}


def test_length_summary_counts_prompts_over_each_cap():
    s = length_summary(np.array([10, 128, 129, 300, 600]), caps=(128, 256, 512))
    assert (s["over_128"], s["over_256"], s["over_512"]) == (3, 2, 1)
    assert s["share_over_128"] == 0.6 and s["max"] == 600 and s["n"] == 5


def test_lcrec_text_matches_titles_and_keeps_the_rest():
    uni = [f("Glue Stick, 3 Pack", "Elmer"), f("Tape", "3M"), f("Tape", "Scotch"), f("Nail", "Acme"), f("Rare thing")]
    lc = [f("Glue stick,  3 pack.", "Elmer", "Acid free."), f("Tape.", "3M", "Strong."), f("Tape.", "Scotch", "Clear."),
          f("Nail.", "Acme", "Steel."), f("Nail.", "Acme", "Zinc.")]
    out, counts = lcrec_text_for(uni, lc)
    assert [x["description"] for x in out[:3]] == ["Acid free.", "Strong.", "Clear."]  # case, spaces, final dot; brand picks
    assert out[3] == uni[3] and out[4] == uni[4]  # two LC-Rec items with that title and brand: kept; no match: kept
    assert counts == {"matched": 3, "ambiguous_kept": 1, "unmatched_kept": 1}
