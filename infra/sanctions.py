"""Sanctions and PEP screening of a person against a list in OpenSanctions' simplified CSV.

The list
--------
The format is OpenSanctions' ``targets.simple.csv``: one row per listed entity, columns
``id,schema,name,aliases,birth_date,countries,addresses,identifiers,sanctions,phones,emails,
dataset,first_seen,last_seen,last_change``, several values in one cell separated by ``;``.
Columns may be added by the publisher (we read them by name); a missing one, a row with the
wrong number of fields or an unreadable date stops the load with the line it is on.
``settings.sanctions_list_path`` says which file; the default is a fixture of made-up
entries (``infra/sandbox/data/sanctions.simple.csv``). A real list is loaded the same way:
download ``targets.simple.csv`` of the OpenSanctions collection you are licensed for and
point ``BFC_SANCTIONS_LIST_PATH`` at it.

Only ``schema == "Person"`` rows are screened against people; companies, vessels and the
like are loaded and counted but never matched to a person. An entry's topics: ``pep`` when
its dataset or sanctions cell says PEP or "politically exposed", ``sanction`` when it names
a sanctions list or carries a sanction that is not a PEP note (an entry can be both).

The version recorded on every decision is ``<file name> sha256:<first 12 hex> <newest
last_change>``: it changes whenever a byte of the file does, and says how fresh it is.

Matching
--------
1. Normalise every name: transliterate to ASCII (``anyascii``: Cyrillic, Greek, Arabic,
   Nordic and German letters alike), casefold, drop apostrophes, turn other punctuation into
   spaces, and leave out name particles (al, el, bin, ben, ibn, von, van, de, ...), which
   transliterations keep, drop or spell differently: "El-Sharkawany" meets "Sharqawani".
2. Name forms. A listed name of two to five tokens stands for every in-order selection of
   at least two of its tokens ("Ivan Sergeyevich Petrov" is also "Ivan Petrov"): listed
   patronymics and middle names may be missing from an application. Longer names stand for
   themselves and their first and last token. The screened person's forms are some given
   names with some family names, in every word order (up to three words; longer ones given
   names first or family names first), so word order does not matter and names are never
   matched on given names alone ("Anna Maria X" does not meet "Anna Maria Y").
3. Score: ``rapidfuzz.fuzz.ratio`` (normalised Indel similarity, 0-100) between the forms
   written without spaces ("Abdel Rahman" meets "Abdulrahman"), the best over all forms of
   all names and aliases of an entry. The list's forms are built once at load;
   ``rapidfuzz.process.extract`` with a score cutoff scans them per query form in C.
4. Birth date: when a listed birth date agrees with the person's (at the listed precision:
   a year-only entry agrees with any date in that year) the score gains ``dob_bonus`` (5);
   when every listed date is ten or more years away it loses ``dob_penalty`` (15): an exact
   name born a decade or more apart is a namesake. Closer dates change nothing: list dates
   are often approximate ("circa", a year off, several candidates), and an exact name two
   years off must still reach an officer. No date on either side: no change.

Threshold
---------
``DEFAULT_THRESHOLD`` = 88. Measured on the labelled pairs in
``tests/data/screening_pairs.csv`` (120 pairs against the fixture: 88 that must match, under
transliterations, swapped order, one-letter typos and missing middle names; 32 that must not,
most sharing a common given name or part of a surname with a listed person, two exact
namesakes born decades apart): precision 1.00, recall 1.00 (the unit test prints both). The
nearest non-match scores 87.2 ("Hans-Dieter Mueller" against "Hans-Dieter Muellenbrock"), the
weakest true match 91.4 (a German transliteration of a Russian name): below 87 the namesakes
come in, above 91 the looser transliterations drop out. Compliance prefers a needless review
to a missed listing, so the threshold sits at the low end of that gap.

Cost: 10,000 listed persons with two aliases each (60,000 forms) load and index in 0.3 s; a
screening then takes 5-100 ms on one core for a name of two to four words, 0.5 s for six.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from itertools import combinations, permutations
from pathlib import Path

import rapidfuzz
from anyascii import anyascii
from rapidfuzz import fuzz, process

from models.screening import ScreeningHit, ScreeningResult, Topic

COLUMNS = (
    "id",
    "schema",
    "name",
    "aliases",
    "birth_date",
    "countries",
    "addresses",
    "identifiers",
    "sanctions",
    "phones",
    "emails",
    "dataset",
    "first_seen",
    "last_seen",
    "last_change",
)
MULTI_VALUE_SEPARATOR = ";"

DEFAULT_THRESHOLD = 88.0
DEFAULT_DOB_BONUS = 5.0
DEFAULT_DOB_PENALTY = 15.0
# Birth years this far apart or more make an exact name a namesake (the penalty).
NAMESAKE_YEARS = 10
# Entries scoring below this are not even looked at: best_score reports 0.0 for them.
NEAR_MISS_FLOOR = 70.0

# Names longer than this (in tokens) do not get every in-order selection as a form: 2^n grows.
_MAX_TOKENS_FOR_SELECTIONS = 5
# The screened person's given and family names: beyond this many tokens per part, only the
# whole part, its first and its last token are tried.
_MAX_PART_TOKENS = 3
# Up to this many words a query form is tried in every word order.
_MAX_PERMUTED_TOKENS = 3
_PARTICLES = frozenset(
    {"al", "el", "ul", "bin", "ben", "ibn", "bint", "von", "van", "der", "den", "de", "da"}
    | {"di", "du", "del", "la", "le"}
)
_APOSTROPHES = re.compile(r"['`\u2018\u2019\u02bb\u02bc\u00b4]")
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_PARTIAL_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_PEP = re.compile(r"\bpeps?\b|politically exposed", re.IGNORECASE)
_SANCTION = re.compile(r"sanction", re.IGNORECASE)


class SanctionsListError(ValueError):
    """The list file cannot be used; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class PartialDate:
    """A listed birth date at the precision the list gives: a year, a month or a day."""

    year: int
    month: int | None = None
    day: int | None = None

    def agrees_with(self, born: date) -> bool:
        return (
            self.year == born.year
            and self.month in (None, born.month)
            and self.day in (None, born.day)
        )


@dataclass(frozen=True)
class ListEntry:
    id: str
    schema: str
    name: str
    aliases: tuple[str, ...]
    birth_dates: tuple[PartialDate, ...]
    countries: tuple[str, ...]
    datasets: tuple[str, ...]
    topics: tuple[Topic, ...]
    last_change: str

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def is_person(self) -> bool:
        return self.schema == "Person"


class SanctionsList:
    def __init__(self, entries: Iterable[ListEntry], *, version: str) -> None:
        self.entries = tuple(entries)
        self.version = version

    @property
    def persons(self) -> tuple[ListEntry, ...]:
        return tuple(e for e in self.entries if e.is_person)

    @classmethod
    def load(cls, path: Path) -> SanctionsList:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise SanctionsListError(f"{path}: cannot read the sanctions list: {exc}") from exc
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise SanctionsListError(f"{path}: line {line}: not UTF-8 text") from exc
        entries = list(_parse(path, text))
        newest = max((e.last_change for e in entries if e.last_change), default="no last_change")
        version = f"{path.name} sha256:{hashlib.sha256(raw).hexdigest()[:12]} {newest}"
        return cls(entries, version=version)


def _split(cell: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in cell.split(MULTI_VALUE_SEPARATOR) if v.strip())


def _parse(path: Path, text: str) -> Iterator[ListEntry]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise SanctionsListError(f"{path}: line 1: empty file, expected a header") from None
    except csv.Error as exc:
        raise SanctionsListError(f"{path}: line 1: {exc}") from exc
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise SanctionsListError(
            f"{path}: line 1: the header lacks {', '.join(missing)}; expected the OpenSanctions "
            f"simplified CSV ({','.join(COLUMNS)})"
        )
    position = {column: header.index(column) for column in COLUMNS}
    seen: dict[str, int] = {}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise SanctionsListError(f"{path}: line {reader.line_num}: {exc}") from exc
        line = reader.line_num
        if not row:
            continue  # a blank line
        if len(row) != len(header):
            raise SanctionsListError(
                f"{path}: line {line}: {len(row)} fields where the header has {len(header)}"
            )
        cell = {column: row[index].strip() for column, index in position.items()}
        for required in ("id", "schema", "name"):
            if not cell[required]:
                raise SanctionsListError(f"{path}: line {line}: empty {required}")
        if cell["id"] in seen:
            raise SanctionsListError(
                f"{path}: line {line}: id {cell['id']} again (first on line {seen[cell['id']]})"
            )
        seen[cell["id"]] = line
        yield ListEntry(
            id=cell["id"],
            schema=cell["schema"],
            name=cell["name"],
            aliases=_split(cell["aliases"]),
            birth_dates=tuple(_partial_date(path, line, v) for v in _split(cell["birth_date"])),
            countries=_split(cell["countries"]),
            datasets=_split(cell["dataset"]),
            topics=_topics(_split(cell["dataset"]), _split(cell["sanctions"])),
            last_change=cell["last_change"],
        )


def _partial_date(path: Path, line: int, value: str) -> PartialDate:
    found = _PARTIAL_DATE.fullmatch(value)
    try:
        if found is None:
            raise ValueError(value)
        year = int(found[1])
        month, day = (int(g) if g else None for g in found.groups()[1:])
        date(year, month or 1, day or 1)  # rejects month 13, 31 February
    except ValueError:
        raise SanctionsListError(
            f"{path}: line {line}: birth_date {value!r} is not YYYY, YYYY-MM or YYYY-MM-DD"
        ) from None
    return PartialDate(year, month, day)


def _topics(datasets: tuple[str, ...], sanctions: tuple[str, ...]) -> tuple[Topic, ...]:
    pep = any(_PEP.search(v) for v in (*datasets, *sanctions))
    sanction = any(_SANCTION.search(d) for d in datasets) or any(
        not _PEP.search(s) for s in sanctions
    )
    topics: list[Topic] = []
    if sanction:
        topics.append("sanction")
    if pep:
        topics.append("pep")
    return tuple(topics)


def name_tokens(name: str) -> tuple[str, ...]:
    """A name as comparable ASCII words: transliterated, casefolded, particles left out."""
    text = _APOSTROPHES.sub("", anyascii(name).casefold())
    words = tuple(_NOT_ALNUM.sub(" ", text).split())
    # A name of particles only ("Ben", a given name) keeps them: they are all it has.
    return tuple(w for w in words if w not in _PARTICLES) or words


def listed_forms(tokens: tuple[str, ...]) -> set[str]:
    """The forms a listed name stands for, written without spaces (see the module doc)."""
    if len(tokens) <= 1:
        return {"".join(tokens)} if tokens else set()
    if len(tokens) > _MAX_TOKENS_FOR_SELECTIONS:
        return {"".join(tokens), tokens[0] + tokens[-1]}
    return {
        "".join(chosen) for k in range(2, len(tokens) + 1) for chosen in combinations(tokens, k)
    }


def _selections(part: tuple[str, ...]) -> set[tuple[str, ...]]:
    if len(part) > _MAX_PART_TOKENS:
        return {part, (part[0],), (part[-1],)}
    return {chosen for k in range(1, len(part) + 1) for chosen in combinations(part, k)}


def _arrangements(given: tuple[str, ...], family: tuple[str, ...]) -> set[str]:
    tokens = given + family
    if len(tokens) <= _MAX_PERMUTED_TOKENS:
        return {"".join(order) for order in permutations(tokens)}
    # Longer names: given names first or family names first, each part in its own order
    # (every permutation of six words would be 720 forms to scan).
    return {"".join(given + family), "".join(family + given)}


def query_forms(given: tuple[str, ...], family: tuple[str, ...]) -> set[str]:
    """The screened person's forms: some given with some family names, in either order."""
    if not given or not family:  # one name only: its selections of two words or more
        whole = given or family
        shortest = min(2, len(whole))
        return {
            form
            for chosen in _selections(whole)
            if len(chosen) >= shortest
            for form in _arrangements(chosen, ())
        }
    return {
        form
        for g in _selections(given)
        for f in _selections(family)
        for form in _arrangements(g, f)
    }


@dataclass(frozen=True)
class _Owner:
    entry: int
    name: int


class Screener:
    """Screens people against one loaded list. Build once; ``screen`` is cheap and pure."""

    def __init__(
        self,
        sanctions_list: SanctionsList,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        dob_bonus: float = DEFAULT_DOB_BONUS,
        dob_penalty: float = DEFAULT_DOB_PENALTY,
    ) -> None:
        self.list = sanctions_list
        self.threshold = threshold
        self.dob_bonus = dob_bonus
        self.dob_penalty = dob_penalty
        self.algorithm = (
            f"rapidfuzz {rapidfuzz.__version__} fuzz.ratio over order-free name forms "
            f"(anyascii, casefold, middle names optional); birth date "
            f"+{dob_bonus:g}/-{dob_penalty:g}"
        )
        self._persons = sanctions_list.persons
        owners: dict[str, list[_Owner]] = {}
        for entry_index, entry in enumerate(self._persons):
            for name_index, name in enumerate(entry.names):
                for form in listed_forms(name_tokens(name)):
                    owners.setdefault(form, []).append(_Owner(entry_index, name_index))
        self._forms = list(owners)
        self._owners = [tuple(owners[form]) for form in self._forms]

    def screen(
        self, given_name: str, family_name: str, date_of_birth: date | None
    ) -> ScreeningResult:
        forms = query_forms(name_tokens(given_name), name_tokens(family_name))
        if not forms:
            # Screening nothing would report "no match": refuse instead.
            raise ValueError("nothing to screen: the name has no letters or digits")
        bonus = self.dob_bonus if date_of_birth is not None else 0.0
        cutoff = max(0.0, min(self.threshold - bonus, NEAR_MISS_FLOOR))
        best: dict[int, tuple[float, int]] = {}  # entry -> (name score, which name)
        for form in forms:
            for _, score, index in process.extract(
                form, self._forms, scorer=fuzz.ratio, score_cutoff=cutoff, limit=None
            ):
                for owner in self._owners[index]:
                    # On a tie the earlier name wins (the primary name before aliases), so
                    # the same screening always reports the same matched name.
                    known = best.get(owner.entry)
                    if known is None or (score, -owner.name) > (known[0], -known[1]):
                        best[owner.entry] = (score, owner.name)
        hits: list[ScreeningHit] = []
        best_score = 0.0
        for entry_index, (name_score, name_index) in best.items():
            entry = self._persons[entry_index]
            agrees, far_off = _compare_birth(entry.birth_dates, date_of_birth)
            score = name_score
            if agrees:
                score = min(100.0, score + self.dob_bonus)
            elif far_off:
                score -= self.dob_penalty
            score = round(score, 1)
            best_score = max(best_score, score)
            if score >= self.threshold:
                hits.append(
                    ScreeningHit(
                        entry_id=entry.id,
                        entry_name=entry.name,
                        matched_name=entry.names[name_index],
                        score=score,
                        algorithm=self.algorithm,
                        birth_date_match=agrees,
                        topics=entry.topics,
                    )
                )
        hits.sort(key=lambda hit: (-hit.score, hit.entry_id))
        return ScreeningResult(
            list_version=self.list.version,
            threshold=self.threshold,
            algorithm=self.algorithm,
            hits=tuple(hits),
            best_score=best_score,
        )


def _compare_birth(listed: tuple[PartialDate, ...], born: date | None) -> tuple[bool | None, bool]:
    """(does a listed date agree, is every listed date ``NAMESAKE_YEARS`` or more away)."""
    if born is None or not listed:
        return None, False
    if any(d.agrees_with(born) for d in listed):
        return True, False
    return False, all(abs(d.year - born.year) >= NAMESAKE_YEARS for d in listed)
