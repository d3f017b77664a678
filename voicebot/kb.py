"""The knowledge base: a file the user owns, JSON or CSV, loaded into a `KnowledgeBase` (company + entries).

Accepted formats (chosen by the file's extension):
- `.json`, either of two shapes:
  - a list of `{"id", "question", "answer"}` objects; an optional `"alt_questions"` list of strings gives other
    ways callers ask the same thing. Other keys in an entry are ignored, so a file may carry its own bookkeeping.
  - an object `{"company": {...}, "entries": [...]}`: `entries` is that same list, `company` (optional) says who
    answers the phone. Its fields, all optional: `name` ("Bright Smile Dental"), `description` (one line that
    completes "You are the phone agent of NAME, ...", e.g. "a dental clinic in Leeds"), `greeting` and
    `farewell` (said word for word instead of the built-in lines), `ticket_categories` (a list of the names the
    company files tickets under, e.g. ["billing", "appointments"]). Unknown keys here are errors: a typo must
    not silently drop the company's name.
- `.csv`: a header row `id,question,answer` (any order, any case; extra columns are ignored), one entry a row.
  An optional `alt_questions` column holds alternative phrasings separated by " | " ("When are you open? | What
  are your hours?"); an empty cell means none. A CSV file carries no company: set `dialog.company_name`.

The file is written by people, often in a spreadsheet, so every problem is a `KbError` that names the file,
the CSV line or JSON entry, and the field at fault, and says how to fix it: a bad entry must stop start-up,
not surface as a wrong answer read to a caller.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, fields
from pathlib import Path

FIELDS = ("id", "question", "answer")
ALT_QUESTIONS = "alt_questions"
CSV_ALT_SEPARATOR = "|"  # written " | " in a cell; the spaces around it are optional
# The demo knowledge base (a fictional online store), used when neither --kb nor dialog.kb_path names one.
SAMPLE_KB = Path(__file__).resolve().parent.parent / "samples" / "kb.json"
FORMATS_HINT = (
    'use a .json file (a list of {"id", "question", "answer"} objects, or an object {"company": {...}, '
    '"entries": [...]} with that list in "entries") or a .csv file with the header id,question,answer '
    "(and optionally an alt_questions column, alternatives separated by |)"
)


class KbError(ValueError):
    """The knowledge base file is unusable; the message names the file, the line or entry, and the field."""


@dataclass(frozen=True)
class KbEntry:
    id: str
    question: str
    answer: str
    alt_questions: tuple[str, ...] = ()

    @property
    def questions(self) -> tuple[str, ...]:
        """The main question first, then the alternatives: every text the index matches callers against."""
        return (self.question, *self.alt_questions)


@dataclass(frozen=True)
class Company:
    """Who answers the phone, as the KB file says (every field may be empty: the bot then speaks nameless)."""

    name: str = ""
    description: str = ""  # one line for the LLM prompt: "a dental clinic in Leeds"
    greeting: str = ""  # said word for word when set, instead of the built-in greeting
    farewell: str = ""
    ticket_categories: tuple[str, ...] = ()  # the names this company files tickets under


@dataclass(frozen=True)
class KnowledgeBase:
    company: Company
    entries: tuple[KbEntry, ...]


COMPANY_FIELDS = tuple(field.name for field in fields(Company))


def load_knowledge_base(path: Path) -> KnowledgeBase:
    """Read and validate the knowledge base at `path` (`.json` or `.csv`), company included."""
    return parse_knowledge_base(read_kb_bytes(path), path)


def load_kb(path: Path) -> list[KbEntry]:
    """The entries of the knowledge base at `path`, for callers that need no company."""
    return list(load_knowledge_base(path).entries)


def read_kb_bytes(path: Path) -> bytes:
    """The file's raw bytes (the index hashes exactly what `parse_kb` parses), or a `KbError` saying why not."""
    path = Path(path)
    if path.suffix.lower() not in (".json", ".csv"):
        raise KbError(f"{path}: unsupported knowledge base format {path.suffix or '(no extension)'!r}; {FORMATS_HINT}")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KbError(
            f"knowledge base file {path} does not exist; pass an existing file with --kb or fix dialog.kb_path"
        ) from None
    except IsADirectoryError:
        raise KbError(f"knowledge base {path} is a folder; point --kb or dialog.kb_path at a file") from None
    except OSError as exc:
        raise KbError(f"knowledge base file {path} cannot be read: {exc.strerror or exc}") from exc


def parse_knowledge_base(data: bytes, path: Path) -> KnowledgeBase:
    """Parse a knowledge base from `data`, the contents of `path` (whose extension picks the format)."""
    path = Path(path)
    try:
        text = data.decode("utf-8-sig")  # Excel and Notepad write a byte-order mark; accept it.
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise KbError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[exc.start]:02x}); the file is probably in "
            f"another encoding (Windows-1252, Latin-1, UTF-16): re-save it as UTF-8 (in Excel: Save As, "
            f"CSV UTF-8)"
        ) from None
    if not text.strip():
        raise KbError(f"{path}: the file is empty; add at least one entry: {FORMATS_HINT}")
    if path.suffix.lower() == ".json":
        kb = _parse_json(text, path)
    else:
        kb = KnowledgeBase(Company(), tuple(_parse_csv(text, path)))
    if not kb.entries:
        raise KbError(f"{path}: the knowledge base has no entries; add at least one question and answer")
    return kb


def parse_kb(data: bytes, path: Path) -> list[KbEntry]:
    """The entries parsed from `data`, the contents of `path`, for callers that need no company."""
    return list(parse_knowledge_base(data, path).entries)


def _parse_json(text: str, path: Path) -> KnowledgeBase:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KbError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, list):
        return KnowledgeBase(Company(), tuple(_parse_entries(data, path)))
    if not isinstance(data, dict):
        raise KbError(
            f'{path}: expected a JSON list of {{"id", "question", "answer"}} objects or an object with "company" '
            f'and "entries", found {_json_type(data)}'
        )
    unknown = [key for key in data if key not in ("company", "entries")]
    if unknown or "entries" not in data:
        found = ", ".join(map(repr, data)) or "none"
        raise KbError(
            f'{path}: a JSON object must hold "entries" (the list of {{"id", "question", "answer"}} objects) '
            f'and may hold "company"; found keys {found}'
        )
    if not isinstance(data["entries"], list):
        raise KbError(
            f'{path}: "entries" must be a list of {{"id", "question", "answer"}} objects, '
            f"found {_json_type(data['entries'])}"
        )
    return KnowledgeBase(_parse_company(data.get("company", {}), path), tuple(_parse_entries(data["entries"], path)))


def _parse_company(block: object, path: Path) -> Company:
    where = f'{path}: "company"'
    if not isinstance(block, dict):
        raise KbError(f'{where} must be an object such as {{"name": "..."}}, found {_json_type(block)}')
    values: dict[str, object] = {}
    for key, value in block.items():
        if key not in COMPANY_FIELDS:
            raise KbError(f'{where}: unknown field "{key}"; the known fields are {", ".join(COMPANY_FIELDS)}')
        if key == "ticket_categories":
            values[key] = _ticket_categories(value, where)
        elif isinstance(value, str):
            values[key] = " ".join(value.split())  # one line: it is spoken or goes into a one-line prompt
        else:
            raise KbError(f'{where}: field "{key}" must be a string, found {_json_type(value)}')
    return Company(**values)


def _ticket_categories(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) and name.strip() for name in value):
        raise KbError(
            f'{where}: field "ticket_categories" must be a list of non-empty strings such as ["billing", '
            f'"appointments"], found {value!r}'
        )
    names = tuple(" ".join(name.split()) for name in value)
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:
            raise KbError(f'{where}: field "ticket_categories" lists {name!r} twice; list each category once')
        seen.add(name.lower())
    return names


def _parse_entries(data: list, path: Path) -> list[KbEntry]:
    entries: list[KbEntry] = []
    seen: dict[str, int] = {}
    for number, item in enumerate(data, start=1):
        where = f"{path}: entry {number}"
        if not isinstance(item, dict):
            raise KbError(
                f'{where} is {_json_type(item)}; each entry must be an object with "id", "question", "answer"'
            )
        raw_id = item.get("id")
        if isinstance(raw_id, str) and raw_id.strip():
            where += f" (id {raw_id.strip()!r})"
        values = {}
        for name in FIELDS:
            if name not in item:
                found = ", ".join(map(repr, item)) or "none"
                raise KbError(f'{where}: missing field "{name}" (fields found: {found})')
            value = item[name]
            if not isinstance(value, str):
                raise KbError(f'{where}: field "{name}" must be a string, found {_json_type(value)}')
            values[name] = _required(value, name, where)
        alt = item.get(ALT_QUESTIONS, [])
        if not isinstance(alt, list) or not all(isinstance(q, str) and q.strip() for q in alt):
            raise KbError(f'{where}: field "{ALT_QUESTIONS}" must be a list of non-empty strings, found {alt!r}')
        entry_id = values["id"]
        if entry_id in seen:
            raise KbError(
                f'{where}: field "id": {entry_id!r} is already used by entry {seen[entry_id]}; ids must be unique'
            )
        seen[entry_id] = number
        entries.append(KbEntry(entry_id, values["question"], values["answer"], tuple(q.strip() for q in alt)))
    return entries


def _parse_csv(text: str, path: Path) -> list[KbEntry]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        names = [name.strip().lower() for name in header]
        missing = [name for name in FIELDS if name not in names]
        if missing:
            hint = (
                "; the file looks separated by semicolons: save it as comma-separated CSV"
                if len(header) == 1 and ";" in header[0]
                else ""
            )
            raise KbError(
                f"{path}: line 1: the header must name the columns id,question,answer; found "
                f"{','.join(header)!r}, missing {', '.join(missing)}{hint}"
            )
        columns = {name: names.index(name) for name in FIELDS}
        alt_column = names.index(ALT_QUESTIONS) if ALT_QUESTIONS in names else None
        entries: list[KbEntry] = []
        seen: dict[str, int] = {}
        start = reader.line_num + 1  # where the next record starts; a quoted field may span several lines
        for row in reader:
            line, start = start, reader.line_num + 1
            where = f"{path}: line {line}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                hint = (
                    "put text that contains a comma in double quotes"
                    if len(row) > len(header)
                    else "fill in every column (an empty one still needs its comma)"
                )
                raise KbError(f"{where} has {len(row)} fields, expected {len(header)} ({','.join(header)}); {hint}")
            raw_id = row[columns["id"]].strip()
            if raw_id:
                where += f" (id {raw_id!r})"
            values = {name: _required(row[index], name, where) for name, index in columns.items()}
            entry_id = values["id"]
            if entry_id in seen:
                raise KbError(
                    f'{where}: field "id": {entry_id!r} is already used on line {seen[entry_id]}; ids must be unique'
                )
            seen[entry_id] = line
            alt = () if alt_column is None else _split_alternatives(row[alt_column])
            entries.append(KbEntry(entry_id, values["question"], values["answer"], alt))
    except csv.Error as exc:
        raise KbError(f"{path}: line {reader.line_num}: malformed CSV ({exc}); check the double quotes") from None
    return entries


def _split_alternatives(cell: str) -> tuple[str, ...]:
    """ "When are you open? | What are your hours?" -> both questions; blanks (a trailing "|") are skipped."""
    return tuple(question.strip() for question in cell.split(CSV_ALT_SEPARATOR) if question.strip())


def _required(value: str, name: str, where: str) -> str:
    value = value.strip()
    if not value:
        what = "an entry without an answer cannot be read to a caller" if name == "answer" else "it is required"
        raise KbError(f'{where}: field "{name}" is empty; {what}: fill it in or remove the entry')
    return value


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")
