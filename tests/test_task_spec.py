"""The task as configuration: typed fields, validation naming the key, answers written and read back."""

from __future__ import annotations

import re

import pytest

from phi3v.task import DEFAULT_ANSWER, FieldSpec, TaskSpec, price_from_answer, task_from_record, task_record

pytestmark = pytest.mark.unit

SEED_ANSWER = "Product: {title}, Category: {category}, Full Price: {price}"
CARS = TaskSpec(
    fields=(
        {"name": "make", "type": "category"},
        {"name": "year", "type": "integer"},
        {"name": "mileage", "type": "number", "format": "{:,.0f} km"},
        {"name": "price", "type": "number"},
    ),
    question="<|image_1|>Describe this car.",
)
CAR = {"make": "Audi", "year": 2019, "mileage": 85000.0, "price": 23500.0}


# ---- the seed task, byte for byte ----------------------------------------------------------------
def test_default_task_is_the_seed_prompt_and_answer():
    task = TaskSpec()
    assert task.answer == SEED_ANSWER == DEFAULT_ANSWER
    assert TaskSpec(answer=SEED_ANSWER) == task
    assert task.names == ("title", "category", "price")
    assert [(f.column, f.type) for f in task.fields] == [
        ("title", "text"), ("category3_code", "category"), ("full_price", "number")
    ]
    assert task.prompt() == "<|user|>\n<|image_1|>What is shown in this image?<|end|>\n<|assistant|>\n"
    # the seed's answers, byte for byte (the price as Python writes the float)
    for values, answer in [
        (("Vintage Check Scarf", "SCARVES", 1250.0),
         "Product: Vintage Check Scarf, Category: SCARVES, Full Price: 1250.0"),
        (("A, b", "N.A.", 1299.99), "Product: A, b, Category: N.A., Full Price: 1299.99"),
        (("Tote", "BAGS", 490), "Product: Tote, Category: BAGS, Full Price: 490.0"),
    ]:
        assert task.answer_for(dict(zip(("title", "category", "price"), values))) == answer


# What the fixed title/category/price template of phi3v before configurable fields (`PromptTemplate`) wrote
# with price_format, for T / C / 12345.5: an old export's prompt.json must keep writing and reading these.
LEGACY_ANSWERS = {"{}": "12345.5", "{:,.2f}": "12,345.50", "${:.0f}": "$12346", "{:,.2f} USD": "12,345.50 USD"}


@pytest.mark.parametrize("price_format", list(LEGACY_ANSWERS))
def test_an_old_prompt_json_reads_as_the_same_task(price_format):
    record = {"question": "<|image_1|>What is shown in this image?", "answer": SEED_ANSWER,
              "price_format": price_format}
    task = task_from_record(record)
    assert task.prompt() == "<|user|>\n<|image_1|>What is shown in this image?<|end|>\n<|assistant|>\n"
    written = task.answer_for({"title": "T", "category": "C", "price": 12345.5})
    assert written == f"Product: T, Category: C, Full Price: {LEGACY_ANSWERS[price_format]}"
    assert (task == TaskSpec()) is (price_format == "{}")  # "{}" is the seed's format: no format at all
    assert task_from_record(task_record(task)) == task  # today's prompt.json round-trips
    assert task_from_record({"answer": "{category} | {title} | {price}"}).answer == "{category} | {title} | {price}"
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        task_from_record({**record, "colour": "red"})


def test_prompt_json_records_every_field():
    assert task_record(CARS) == {
        "question": "<|image_1|>Describe this car.",
        "answer": "Make: {make}, Year: {year}, Mileage: {mileage}, Price: {price}",
        "fields": [
            {"name": "make", "column": "make", "type": "category", "format": None, "label": "Make"},
            {"name": "year", "column": "year", "type": "integer", "format": None, "label": "Year"},
            {"name": "mileage", "column": "mileage", "type": "number", "format": "{:,.0f} km", "label": "Mileage"},
            {"name": "price", "column": "price", "type": "number", "format": None, "label": "Price"},
        ],
    }


# ---- parsing agrees with the seed's parser (`PromptTemplate.parse`, before the fields) on the seed task -----
# (answer, what the seed parser read: title, category, price); it read a title and category only from an answer
# in the template's shape, and the price after the last "Full Price", else the last number.
AGREEMENT = [
    ("Product: Vintage Check Scarf, Category: SCARVES, Full Price: 1,250.00 trailing",
     ("Vintage Check Scarf", "SCARVES", 1250.0)),
    ("Product:  Red  Mug \t, Category:   MUGS  , Full Price: 12.00", ("Red  Mug", "MUGS", 12.0)),
    ("Product: Trench, Category: COATS, Full Price: $2,290.00 USD<|end|>", ("Trench", "COATS", 2290.0)),
    ("Product: 3 Pack Socks, Category: SOCKS, Full Price: 120", ("3 Pack Socks", "SOCKS", 120.0)),
    ("Product: Full Price: 10 Tote, Category: BAGS, Full Price: 490.00", ("Full Price: 10 Tote", "BAGS", 490.0)),
    ("product: scarf, category: scarves, full price: 490.0", ("scarf", "scarves", 490.0)),  # case ignored
    ("Product: Scarf, red, Category: SCARVES, Full Price: 490.0", ("Scarf, red", "SCARVES", 490.0)),  # a comma
    ("Full Price: 1 250 and then some words 99", (None, None, 1250.0)),
    ("no label but 75.5 at the end", (None, None, 75.5)),
    ("Product: 2 Pack Socks, Category: SOCKS, Price 45", (None, None, 45.0)),
    ("Product: nothing here", (None, None, None)),
    ("", (None, None, None)),
    ("Product: A, Category: B, Full Price: " + "9" * 400, ("A", "B", None)),
]


@pytest.mark.parametrize(("answer", "seed"), AGREEMENT)
def test_parse_agrees_with_the_seed_parser(answer, seed):
    new = TaskSpec().parse(answer)
    title, category, price = seed
    assert new["price"] == price == price_from_answer(answer)
    if title is not None:  # the template matched: the same three values
        assert (new["title"], new["category"]) == (title, category)


def test_parse_exact_values_of_the_seed_task():
    task = TaskSpec()
    assert task.parse("Product: Scarf, red, Category: SCARVES, Full Price: 490.0") == {
        "title": "Scarf, red", "category": "SCARVES", "price": 490.0
    }
    assert task.parse("Product:  Red  Mug \t, Category:   MUGS  , Full Price: 12.00") == {
        "title": "Red  Mug", "category": "MUGS", "price": 12.0  # ends stripped only
    }
    # Where the seed parser gave up on title and category, fields are found by their labels, in any order.
    assert task.parse("Category: SCARVES, Full Price: 490") == {"title": None, "category": "SCARVES", "price": 490.0}
    assert task.parse("Full Price: 490.00 USD, Product: Check Tote, Category: BAGS") == {
        "title": "Check Tote", "category": "BAGS", "price": 490.0
    }
    assert task.parse("Product: , Category: BAGS, Full Price: none") == {"title": None, "category": "BAGS",
                                                                         "price": None}
    assert task.parse("no label but 75.5 at the end") == {"title": None, "category": None, "price": 75.5}
    # a label said twice: the last one counts, as for the seed's "Full Price:"
    assert task.parse("Category: SHOES, Full Price: 490, Product: Tote, Category: BAGS") == {
        "title": "Tote", "category": "BAGS", "price": 490.0
    }


# ---- any catalogue ----------------------------------------------------------------------------------
def test_a_car_catalogue_without_title_round_trips():
    assert CARS.answer == "Make: {make}, Year: {year}, Mileage: {mileage}, Price: {price}"
    answer = CARS.answer_for(CAR)
    assert answer == "Make: Audi, Year: 2019, Mileage: 85,000 km, Price: 23500.0"
    assert CARS.parse(answer) == CAR
    assert type(CARS.parse(answer)["year"]) is int
    assert [f.column for f in CARS.fields] == ["make", "year", "mileage", "price"]  # column defaults to the name
    assert CARS.prompt(2) == "<|user|>\n<|image_1|><|image_2|>Describe this car.<|end|>\n<|assistant|>\n"


def test_car_answers_in_another_order_or_with_fields_missing():
    assert CARS.parse("Year: 2019, Make: Audi A4, Price: $23,500, Mileage: 85,000 km") == {
        "make": "Audi A4", "year": 2019, "mileage": 85000.0, "price": 23500.0
    }
    # a missing field is None, the others are kept
    assert CARS.parse("Make: BMW; Mileage: 12 km") == {"make": "BMW", "year": None, "mileage": 12.0, "price": None}
    assert CARS.parse("Make: Audi, Year: 2019.5, Mileage: lots, Price: 1") == {
        "make": "Audi", "year": None, "mileage": None, "price": 1.0  # a year must be whole; no number is none
    }
    # two numeric fields and no labels: no guess which number is which
    assert CARS.parse("a 2019 car for 23500") == {"make": None, "year": None, "mileage": None, "price": None}


def test_a_label_inside_a_longer_label_is_not_a_label():
    task = TaskSpec(fields=(FieldSpec("full_price", type="number", label="Full Price"),
                            FieldSpec("price", type="number", label="Price")))
    assert task.answer == "Full Price: {full_price}, Price: {price}"
    # out of template order: found by labels; the "Price" inside "Full Price:" is not the price's label
    assert task.parse("Price: 700, Full Price: 1000") == {"full_price": 1000.0, "price": 700.0}


def test_explicit_answer_template_sets_order_and_labels():
    task = TaskSpec(
        fields=(FieldSpec("price", "cost", "number", format="{:,.2f}"), FieldSpec("artist", type="text")),
        answer="{artist} ({price} EUR)",
    )
    assert task.answer_for({"price": 1250.0, "artist": "Monet, Claude"}) == "Monet, Claude (1,250.00 EUR)"
    assert task.parse("Monet, Claude (1,250.00 EUR)") == {"price": 1250.0, "artist": "Monet, Claude"}
    assert task.parse("something else entirely 12") == {"price": 12.0, "artist": None}


def test_labels_default_from_the_name():
    assert FieldSpec("body_type").label == "Body type" and FieldSpec("year").label == "Year"
    assert FieldSpec("x", label="").label == ""
    assert TaskSpec(fields=(FieldSpec("a", label=""), FieldSpec("b"))).answer == "{a}, B: {b}"


def test_field_write_and_parse_by_type():
    number, integer = FieldSpec("p", type="number"), FieldSpec("y", type="integer")
    category, text = FieldSpec("c", type="category"), FieldSpec("t", type="text")
    assert (number.write(1250), number.write(1299.99), integer.write(2019.0), category.write("BAGS")) == (
        "1250.0", "1299.99", "2019", "BAGS"
    )
    for field, bad in [(number, "1,250"), (number, float("inf")), (number, True), (integer, 2019.5), (integer, None)]:
        with pytest.raises(ValueError, match=f"field '{field.name}' holds"):
            field.write(bad)
    with pytest.raises(ValueError, match="no value"):
        text.write(None)
    assert (integer.parse("85,000 km"), integer.parse("2019.0"), integer.parse("2019.5")) == (85000, 2019, None)
    assert integer.parse("9" * 30) is None  # not a count or a year
    assert (number.parse("USD 3,999.99"), number.parse("none"), text.parse("  "), text.parse(" A b ")) == (
        3999.99, None, None, "A b"
    )


def test_fields_by_name():
    assert CARS.field("year") == FieldSpec("year", "year", "integer", label="Year")
    with pytest.raises(KeyError, match="no field named 'title'; fields: make, year, mileage, price"):
        CARS.field("title")


def test_missing_value_names_the_field():
    with pytest.raises(KeyError, match="mileage, price"):
        CARS.answer_for({"make": "Audi", "year": 2019})


def test_check_columns_names_the_key():
    CARS.check_columns(["make", "year", "mileage", "price", "photo"])
    with pytest.raises(ValueError, match=re.escape("data.task.fields[1].column = 'year' (year) is not a column")):
        CARS.check_columns(["make", "mileage", "price"])


# ---- validation: every problem at once, each naming its key ---------------------------------------------
def problems(**arguments) -> list[str]:
    with pytest.raises(ValueError) as raised:
        TaskSpec(**arguments)
    return str(raised.value).split("\n")


def test_validation_collects_every_problem_naming_the_key():
    found = problems(
        fields=({"name": "title"}, {"name": "price", "type": "float"}, {"name": "year", "type": "integer",
                "format": "{:.2e}"}, {"name": "make", "kind": "category"}),
        question="What is it?",
        answer="Product: {title} {colour}, Price: {price:.2f}",
    )
    assert found == [
        "data.task.fields[3] needs a name and only the keys name, column, type, format, label; got "
        "{'name': 'make', 'kind': 'category'}",
        "data.task.fields[1].type 'float' is not a field type; use one of number, integer, category, text",
        "data.task.fields[2].format '{:.2e}' writes 2019 as '2.02e+03', which reads back as 3: the answer could "
        "not be scored",
        "data.task.question must hold <|image_1|> (standing for all of an item's photos) or "
        "<|image_1|>..<|image_n|> once each, in order; got no image tag in 'What is it?'",
        "data.task.answer has {colour} but no field of data.task.fields is named 'colour' (fields: title, price, year)",
        "data.task.answer: write {price} and put the format in the field's `format`, not "
        "'Product: {title} {colour}, Price: {price:.2f}'",
        "data.task.fields[2] (year) is not in data.task.answer 'Product: {title} {colour}, Price: {price:.2f}': "
        "add {year} or remove the field",
    ]


def test_a_bad_field_is_one_problem_not_also_a_bad_answer():
    assert problems(fields=({"name": "make", "kind": "category"}, {"name": "year"})) == [
        "data.task.fields[0] needs a name and only the keys name, column, type, format, label; got "
        "{'name': 'make', 'kind': 'category'}"
    ]
    assert problems(fields=()) == ["data.task.fields is empty: the answer needs at least one field"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"fields": ()}, "data.task.fields is empty"),
        ({"fields": "title"}, "data.task.fields must be a list of fields"),
        ({"fields": (3,)}, "data.task.fields[0] must be a mapping"),
        ({"fields": (FieldSpec("a b"),)}, "data.task.fields[0].name must be a Python identifier"),
        ({"fields": (FieldSpec("a"), FieldSpec("a"))}, "data.task.fields: two fields are named 'a'"),
        ({"fields": (FieldSpec("a", column=""),)}, "data.task.fields[0].column must name a catalogue column"),
        ({"fields": (FieldSpec("p", type="number", format="{:d}"),)},
         "data.task.fields[0].format '{:d}' cannot format a number (1250.0)"),
        ({"fields": (FieldSpec("t", format="{:.3}"),)}, "writes 'Check Scarf' as 'Che'"),
        ({"fields": (FieldSpec("a"), FieldSpec("b")), "answer": "{a}{b}"},
         "data.task.answer needs text between {a} and {b}"),
        ({"fields": (FieldSpec("a"), FieldSpec("b")), "answer": "{a} {b}"},
         "data.task.answer needs text between {a} and {b}"),
        ({"fields": (FieldSpec("a"),), "answer": "{a} and {a}"}, "data.task.answer has {a} more than once"),
        ({"fields": (FieldSpec("a"),), "answer": "{a} {"}, "is not a valid template"),
        ({"fields": (FieldSpec("a"),), "answer": "{}"}, "data.task.answer has {} but no field"),
        ({"fields": (FieldSpec("a"),), "answer": 3}, "data.task.answer must be a string"),
        ({"question": "<|image_2|>What?"}, "got ['<|image_2|>'] in"),
        ({"question": "<|image_1|><|image_1|>What?"}, "got ['<|image_1|>', '<|image_1|>'] in"),
    ],
)
def test_each_problem_is_named(arguments, message):
    assert any(message in line for line in problems(**arguments)), problems(**arguments)


@pytest.mark.parametrize(
    ("field", "ok"),
    [
        (FieldSpec("p", type="number", format="{:,.2f}"), True),
        (FieldSpec("p", type="number", format="{:.0f}"), True),  # 1250.0 reads back as 1250.0
        (FieldSpec("p", type="number", format="{:e}"), False),  # 1.250000e+03 reads back as 1.25
        (FieldSpec("y", type="integer", format="{:,}"), True),
        (FieldSpec("y", type="integer", format="{:.1f}"), True),
        (FieldSpec("c", type="category", format="{:>12}"), True),  # padding is stripped when read
        (FieldSpec("c", type="category", format="{} (new)"), False),
    ],
)
def test_a_format_must_read_back(field, ok):
    assert (field.problems("k") == []) is ok


def test_the_yaml_shape_builds_the_task_through_its_schema():
    """`data.task` in conf/ is typed by TaskSpec itself (phi3v/config_schema.py): the YAML of the docstring
    builds the seed task, a format reaches the field, and a typo in a field's key names it."""
    from omegaconf import OmegaConf

    from phi3v.config_schema import schema

    node = OmegaConf.merge(schema(TaskSpec), OmegaConf.create(
        """
        question: "<|image_1|>What is shown in this image?"
        answer: null
        fields:
          - {name: title, column: title, type: text, label: Product}
          - {name: category, column: category3_code, type: category, label: Category}
          - {name: price, column: full_price, type: number, label: Full Price, format: "{:,.2f}"}
        """
    ))
    task = OmegaConf.to_object(node)
    assert task == task_from_record({"answer": SEED_ANSWER, "price_format": "{:,.2f}"})
    assert task.answer_for({"title": "T", "category": "C", "price": 1250.0}) == (
        "Product: T, Category: C, Full Price: 1,250.00")
    with pytest.raises(Exception, match="Key 'kind' not in 'FieldSpec'"):
        OmegaConf.merge(schema(TaskSpec), {"fields": [{"name": "make", "kind": "category"}]})
