"""Knowledge-base loading: every format (JSON list or object with its company, CSV), the sample KB, and every
way a user's file can be wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from voicebot.kb import SAMPLE_KB, Company, KbEntry, KbError, KnowledgeBase, load_kb, load_knowledge_base

GOOD_ENTRIES = [
    {"id": "returns", "question": "How do I return an item?", "answer": "You can return unopened items within 7 days."},
    {
        "id": "hours",
        "question": "When are you open?",
        "answer": "Monday to Saturday, from 9 to 7.",
        "alt_questions": ["What are your opening hours?"],
    },
]


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_sample_kb_is_speakable_and_covers_the_store_basics():
    entries = load_kb(SAMPLE_KB)
    by_id = {entry.id: entry for entry in entries}
    assert len(entries) >= 15
    for required in ("change_address", "returns", "invoice", "delivery_time", "damaged_item", "track_order"):
        assert required in by_id
    assert (
        by_id["change_address"].answer == "Open My Orders, pick the order and choose Change address, before it ships."
    )
    assert "7 days" in by_id["returns"].answer and "unopened" in by_id["returns"].answer
    assert "tax number" in by_id["invoice"].answer
    assert sum(bool(entry.alt_questions) for entry in entries) >= 10
    for entry in entries:
        # Read aloud by a TTS voice: no markup, links or lists, one or two short sentences.
        assert not re.search(r"https?:|www\.|[*#_`\[\]<>|]|\n|^\s*[-•]", entry.answer), entry.id
        assert len(re.findall(r"[.!?](\s|$)", entry.answer)) <= 2, entry.id
        assert len(entry.answer.split()) <= 32, entry.id


def test_json_and_csv_load_the_same_entries(tmp_path):
    from_json = load_kb(write(tmp_path, "kb.json", json.dumps(GOOD_ENTRIES)))
    csv_text = (
        "id,question,answer\n"
        'returns,How do I return an item?,"You can return unopened items within 7 days."\n'
        'hours,When are you open?,"Monday to Saturday, from 9 to 7."\n'
    )
    from_csv = load_kb(write(tmp_path, "kb.csv", csv_text))
    assert from_json[0] == from_csv[0] == KbEntry("returns", "How do I return an item?", GOOD_ENTRIES[0]["answer"])
    assert from_json[1].alt_questions == ("What are your opening hours?",)
    assert from_json[1].questions == ("When are you open?", "What are your opening hours?")
    assert from_csv[1].answer == "Monday to Saturday, from 9 to 7."


def test_csv_from_a_spreadsheet(tmp_path):
    """BOM, CRLF, header in another case and order, an extra column, blank lines, a multi-line quoted answer."""
    csv_text = (
        "\ufeffQuestion , ID,Answer,notes\r\n"
        'How do I return an item?,returns,"You can return items\r\nwithin 7 days.",checked\r\n'
        "\r\n"
        "When are you open?,hours,Monday to Saturday.,\r\n"
    )
    entries = load_kb(write(tmp_path, "kb.csv", csv_text))
    assert [entry.id for entry in entries] == ["returns", "hours"]
    assert entries[0].answer == "You can return items\r\nwithin 7 days."


def test_json_with_bom_and_extra_keys(tmp_path):
    data = [{**GOOD_ENTRIES[0], "category": "returns", "updated": "2026-01-02"}]
    entries = load_kb(write(tmp_path, "kb.json", b"\xef\xbb\xbf" + json.dumps(data).encode()))
    assert entries == [KbEntry("returns", "How do I return an item?", GOOD_ENTRIES[0]["answer"])]


def test_list_form_has_no_company(tmp_path):
    kb = load_knowledge_base(write(tmp_path, "kb.json", json.dumps(GOOD_ENTRIES)))
    assert kb == KnowledgeBase(Company(), tuple(load_kb(tmp_path / "kb.json")))
    assert kb.company.name == "" and len(kb.entries) == 2


def test_object_form_carries_the_company(tmp_path):
    company = {
        "name": "Bright Smile Dental",
        "description": "a dental clinic\nin Leeds",
        "greeting": "  Good morning, Bright Smile Dental, how can I help?",
        "farewell": "Thank you for calling. Take care!",
        "ticket_categories": ["appointments", " billing "],
    }
    path = write(tmp_path, "kb.json", json.dumps({"company": company, "entries": GOOD_ENTRIES}))
    kb = load_knowledge_base(path)
    assert kb.company == Company(
        name="Bright Smile Dental",
        description="a dental clinic in Leeds",  # one line: it goes into a one-line prompt
        greeting="Good morning, Bright Smile Dental, how can I help?",
        farewell="Thank you for calling. Take care!",
        ticket_categories=("appointments", "billing"),
    )
    list_form = load_knowledge_base(write(tmp_path, "list.json", json.dumps(GOOD_ENTRIES)))
    assert kb.entries == list_form.entries
    assert load_kb(path) == list(kb.entries)


def test_object_form_company_is_optional_and_partial(tmp_path):
    bare = load_knowledge_base(write(tmp_path, "bare.json", json.dumps({"entries": GOOD_ENTRIES})))
    assert bare.company == Company()
    named = load_knowledge_base(
        write(tmp_path, "named.json", json.dumps({"company": {"name": "Acme Bank"}, "entries": GOOD_ENTRIES}))
    )
    assert named.company == Company(name="Acme Bank")


def test_csv_alternative_questions(tmp_path):
    csv_text = (
        "id,question,alt_questions,answer\n"
        'hours,When are you open?,What are your hours? | Are you open on Sundays?,"Monday to Saturday, 9 to 7."\n'
        "fees,Is there a monthly fee?,,No monthly fee.\n"
        "pin,How do I change my PIN?,Can I pick a new PIN?|,At any cash machine.\n"
    )
    kb = load_knowledge_base(write(tmp_path, "kb.csv", csv_text))
    assert kb.company == Company()
    hours, fees, pin = kb.entries
    assert hours.alt_questions == ("What are your hours?", "Are you open on Sundays?")
    assert hours.questions[0] == "When are you open?" and hours.answer == "Monday to Saturday, 9 to 7."
    assert fees.alt_questions == ()
    assert pin.alt_questions == ("Can I pick a new PIN?",)  # a trailing separator is no question


def test_sample_kb_names_its_company():
    company = load_knowledge_base(SAMPLE_KB).company
    assert company.name == "Northwind Shop" and company.description
    assert company.ticket_categories


def _json(*entries: object) -> str:
    return json.dumps(list(entries), indent=2)


ERROR_CASES = {
    "json missing field": (
        "kb.json",
        _json({"id": "a", "question": "Q?"}),
        ["entry 1 (id 'a')", 'missing field "answer"', "'id', 'question'"],
    ),
    "json empty question": (
        "kb.json",
        _json(GOOD_ENTRIES[0], {"id": "b", "question": "  ", "answer": "A."}),
        ["entry 2 (id 'b')", '"question" is empty'],
    ),
    "json empty answer": (
        "kb.json",
        _json({"id": "a", "question": "Q?", "answer": ""}),
        ["entry 1 (id 'a')", '"answer" is empty', "cannot be read to a caller"],
    ),
    "json empty id": (
        "kb.json",
        _json({"id": "", "question": "Q?", "answer": "A."}),
        ["entry 1", '"id" is empty'],
    ),
    "json duplicate id": (
        "kb.json",
        _json(GOOD_ENTRIES[0], GOOD_ENTRIES[1], {**GOOD_ENTRIES[0], "question": "Can I send it back?"}),
        ["entry 3 (id 'returns')", '"id"', "already used by entry 1"],
    ),
    "json answer not a string": (
        "kb.json",
        _json({"id": "a", "question": "Q?", "answer": 42}),
        ["entry 1 (id 'a')", '"answer" must be a string', "a number"],
    ),
    "json id not a string": (
        "kb.json",
        _json({"id": 7, "question": "Q?", "answer": "A."}),
        ["entry 1", '"id" must be a string', "a number"],
    ),
    "json alt_questions not a list": (
        "kb.json",
        _json({"id": "a", "question": "Q?", "answer": "A.", "alt_questions": "Other?"}),
        ["entry 1 (id 'a')", '"alt_questions" must be a list of non-empty strings'],
    ),
    "json entry not an object": (
        "kb.json",
        _json(GOOD_ENTRIES[0], "How do I return an item?"),
        ["entry 2 is a string", '"id", "question", "answer"'],
    ),
    "json object without entries": (
        "kb.json",
        json.dumps({"returns": "..."}),
        ['a JSON object must hold "entries"', '"company"', "found keys 'returns'"],
    ),
    "json object with an unknown key": (
        "kb.json",
        json.dumps({"company": {}, "entries": GOOD_ENTRIES, "faqs": []}),
        ['must hold "entries"', "found keys 'company', 'entries', 'faqs'"],
    ),
    "json entries not a list": (
        "kb.json",
        json.dumps({"entries": {"returns": GOOD_ENTRIES[0]}}),
        ['"entries" must be a list', "found an object"],
    ),
    "json top level a string": ("kb.json", json.dumps("FAQ"), ["expected a JSON list", '"entries"', "a string"]),
    "json object entry missing a field": (
        "kb.json",
        json.dumps({"company": {"name": "Acme"}, "entries": [{"id": "a", "answer": "A."}]}),
        ["entry 1 (id 'a')", 'missing field "question"'],
    ),
    "json object with no entries": (
        "kb.json",
        json.dumps({"company": {"name": "Acme"}, "entries": []}),
        ["no entries"],
    ),
    "company not an object": (
        "kb.json",
        json.dumps({"company": "Acme", "entries": GOOD_ENTRIES}),
        ['"company" must be an object', "found a string"],
    ),
    "company unknown field": (
        "kb.json",
        json.dumps({"company": {"name": "Acme", "phone": "555"}, "entries": GOOD_ENTRIES}),
        ['"company": unknown field "phone"', "name, description, greeting, farewell, ticket_categories"],
    ),
    "company field of the wrong type": (
        "kb.json",
        json.dumps({"company": {"name": ["Acme"]}, "entries": GOOD_ENTRIES}),
        ['"company": field "name" must be a string', "found a list"],
    ),
    "company greeting null": (
        "kb.json",
        json.dumps({"company": {"greeting": None}, "entries": GOOD_ENTRIES}),
        ['field "greeting" must be a string', "found null"],
    ),
    "company ticket categories not a list": (
        "kb.json",
        json.dumps({"company": {"ticket_categories": "billing, outage"}, "entries": GOOD_ENTRIES}),
        ['field "ticket_categories" must be a list of non-empty strings', "'billing, outage'"],
    ),
    "company ticket category empty": (
        "kb.json",
        json.dumps({"company": {"ticket_categories": ["billing", " "]}, "entries": GOOD_ENTRIES}),
        ['field "ticket_categories" must be a list of non-empty strings'],
    ),
    "company ticket category twice": (
        "kb.json",
        json.dumps({"company": {"ticket_categories": ["Billing", "outage", "billing"]}, "entries": GOOD_ENTRIES}),
        ["lists 'billing' twice"],
    ),
    "json syntax error": (
        "kb.json",
        '[\n  {"id": "a", "question": "Q?",\n   "answer": "A.",}\n]',
        ["invalid JSON at line 3 column", "property name"],
    ),
    "json empty list": ("kb.json", "[]", ["has no entries"]),
    "json empty file": ("kb.json", "", ["the file is empty"]),
    "json not utf-8": (
        "kb.json",
        '[\n  {"id": "cafe", "question": "Caf\xe9?", "answer": "A."}\n]'.encode("latin-1"),
        ["line 2 is not valid UTF-8", "0xe9", "re-save it as UTF-8"],
    ),
    "json utf-16": ("kb.json", _json(GOOD_ENTRIES[0]).encode("utf-16"), ["line 1 is not valid UTF-8", "UTF-16"]),
    "csv wrong header": (
        "kb.csv",
        "question,reply\nHow?,Like this.\n",
        ["line 1", "header must name the columns id,question,answer", "missing id, answer"],
    ),
    "csv semicolons": ("kb.csv", "id;question;answer\na;Q?;A.\n", ["line 1", "separated by semicolons"]),
    "csv no header": (
        "kb.csv",
        "returns,How do I return an item?,Within 7 days.\n",
        ["line 1", "header must name the columns", "missing id, question, answer"],
    ),
    "csv unquoted comma": (
        "kb.csv",
        "id,question,answer\nreturns,How do I return?,Within 7 days.\nhours,When?,Monday, to Saturday.\n",
        ["line 3 has 4 fields, expected 3", "double quotes"],
    ),
    "csv missing field": (
        "kb.csv",
        "id,question,answer\nreturns,How do I return?\n",
        ["line 2 has 2 fields, expected 3", "fill in every column"],
    ),
    "csv empty answer": (
        "kb.csv",
        "id,question,answer\nreturns,How do I return?, \n",
        ["line 2 (id 'returns')", '"answer" is empty'],
    ),
    "csv empty question": (
        "kb.csv",
        "id,question,answer\nreturns,,Within 7 days.\n",
        ["line 2", '"question" is empty'],
    ),
    "csv duplicate id after a multi-line answer": (
        "kb.csv",
        'id,question,answer\nreturns,How?,"Within\n7 days."\nhours,When?,9 to 7.\nreturns,Again?,Yes.\n',
        ["line 5 (id 'returns')", '"id"', "already used on line 2"],
    ),
    "csv not utf-8": (
        "kb.csv",
        "id,question,answer\nreturns,How?,Within 7 days.\ncafe,Caf\xe9?,Yes.\n".encode("cp1252"),
        ["line 3 is not valid UTF-8", "re-save it as UTF-8", "CSV UTF-8"],
    ),
    "csv header only": ("kb.csv", "id,question,answer\n", ["has no entries"]),
    "csv unterminated quote": ("kb.csv", 'id,question,answer\nreturns,How?,"Within 7 days.\n', ["malformed CSV"]),
    "unsupported extension": (
        "kb.txt",
        "Q: How? A: Like this.",
        ["unsupported knowledge base format '.txt'", ".json", ".csv"],
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_bad_file_names_the_file_place_and_field(tmp_path, case):
    name, content, expected = ERROR_CASES[case]
    path = write(tmp_path, name, content)
    with pytest.raises(KbError) as error:
        load_kb(path)
    message = str(error.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(KbError, match=r"kb\.json does not exist; pass an existing file with --kb"):
        load_kb(tmp_path / "kb.json")
    (tmp_path / "kb.csv").mkdir()
    with pytest.raises(KbError, match=r"kb\.csv is a folder"):
        load_kb(tmp_path / "kb.csv")
