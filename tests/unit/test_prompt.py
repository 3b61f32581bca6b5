from encoder.prompt import DEFAULT_TEMPLATE, build_prompt, clean_field, template_fields


def test_all_fields_in_template_order():
    f = {"title": "Glue", "brand": "Gorilla", "categories": "Adhesives", "description": "Strong."}
    assert build_prompt(f) == "Title: Glue Brand: Gorilla Category: Adhesives Description: Strong."


def test_missing_and_blank_fields_are_left_out_with_their_label():
    assert build_prompt({"title": "Glue", "brand": "  ", "description": None}) == "Title: Glue"
    assert build_prompt({"brand": "Gorilla", "categories": "Adhesives"}) == "Brand: Gorilla Category: Adhesives"


def test_custom_template_lists_and_whitespace():
    t = "{title} | made by {brand}."
    assert build_prompt({"title": " Big\n  glue ", "brand": "X"}, t) == "Big glue | made by X."
    assert build_prompt({"title": "Glue"}, t) == "Glue."
    assert build_prompt({}, t) == ""
    assert clean_field(["a", "", "b"]) == "a, b"
    assert template_fields(DEFAULT_TEMPLATE) == ["title", "brand", "categories", "description"]
