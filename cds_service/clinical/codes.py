"""Value sets: which lab codes are which analyte, which medicines are B12 or iron, which conditions matter.

Only codes verified in the project's clinical knowledge file are listed; real data often carries codes
nobody listed, so medicines, conditions and orders are also matched on their text (and a Medication's
ingredients). A site adds its own codes per value set in its configuration (``codes`` section, entries
``"system|code"``); a site cannot remove a default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cds_service.fhir.read import codings, concept_text

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC_SYSTEMS = frozenset({"http://www.whocc.no/atc", "urn:oid:2.16.840.1.113883.6.73"})
SNOMED = "http://snomed.info/sct"
ICD10_SYSTEMS = frozenset({"http://hl7.org/fhir/sid/icd-10-cm", "http://hl7.org/fhir/sid/icd-10"})

# --- laboratory analytes (LOINC) ----------------------------------------------------------------------

ANALYTE_LOINC: dict[str, tuple[str, ...]] = {
    "b12": ("2132-9", "14685-2"),
    "ferritin": ("2276-4", "20567-4", "24373-3"),
    "tsat": ("2502-3", "14801-5"),
    "iron": ("2498-4", "14798-3"),
    "tibc": ("2500-7", "14800-7"),
    "transferrin": ("3034-6",),
    "crp": ("1988-5", "30522-7", "76485-2"),
    "mcv": ("787-2", "30428-7"),
    "hb": ("718-7",),
    "mma": ("13964-2",),
    "alt": ("1742-6",),
    "ast": ("1920-8",),
    "intrinsic-factor-ab": ("31444-3",),
    "parietal-cell-ab": ("40960-7", "8087-9"),
    "gastrin": ("2333-3",),
    "ttg-iga": ("31017-7",),
}

# The LOINC code a suggested order uses (ANALYTE_NAMES names it on the card).
ORDER_CODES: dict[str, str] = {
    "b12": "2132-9",
    "ferritin": "2276-4",
    "tsat": "2502-3",
    "iron": "2498-4",
    "tibc": "2500-7",
    "crp": "1988-5",
    "alt": "1742-6",
    "ast": "1920-8",
    "mma": "13964-2",
    "intrinsic-factor-ab": "31444-3",
    "parietal-cell-ab": "40960-7",
    "gastrin": "2333-3",
    "ttg-iga": "31017-7",
}

ANALYTE_NAMES: dict[str, str] = {
    "b12": "vitamin B12",
    "ferritin": "ferritin",
    "tsat": "transferrin saturation",
    "iron": "serum iron",
    "tibc": "TIBC",
    "transferrin": "transferrin",
    "crp": "CRP",
    "mcv": "MCV",
    "hb": "haemoglobin",
    "mma": "methylmalonic acid",
    "alt": "ALT",
    "ast": "AST",
    "intrinsic-factor-ab": "intrinsic factor antibody",
    "parietal-cell-ab": "parietal cell antibody",
    "gastrin": "gastrin",
    "ttg-iga": "tTG IgA",
}

# Prefetch groups: the B12/iron panel apart from the frequent context labs, so that CBCs never push a
# B12 off the first page of a newest-first search.
PREFETCH_GROUPS: dict[str, tuple[str, ...]] = {
    "b12-iron": (
        "b12",
        "ferritin",
        "tsat",
        "iron",
        "tibc",
        "transferrin",
        "mma",
        "intrinsic-factor-ab",
        "parietal-cell-ab",
        "gastrin",
        "ttg-iga",
    ),
    "context": ("mcv", "hb", "crp", "alt", "ast"),
}

# Order text an EHR may use for a lab without a LOINC code (a local order catalogue). Serum iron is read only
# where the name says serum or pairs it with TIBC: "iron" alone may be a liver MRI, a marrow stain or an
# infusion, and an order read as one it is not would stop a card from suggesting the test.
_ORDER_TEXT: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = (
    (re.compile(r"\bferritin\b"), ("ferritin",)),
    (re.compile(r"transferrin saturation|iron saturation|\btsat\b"), ("tsat",)),
    (re.compile(r"iron (studies|panel|profile)"), ("iron", "tibc", "tsat")),
    (re.compile(r"\btibc\b|iron[ -]binding capacity"), ("tibc",)),
    (
        re.compile(r"serum iron|\biron,? \(?(?:serum|total)\b|\biron ?(?:and|,|\+|/|&) ?(?:tibc|total iron)"),
        ("iron",),
    ),
    (re.compile(r"methylmalon|\bmma\b"), ("mma",)),
    (re.compile(r"\bvit(amin)?\.? ?b-? ?12\b|\bb-?12\b|cobalamin"), ("b12",)),
    (re.compile(r"\bc[ -]?reactive protein\b|\b(?:hs-?)?crp\b"), ("crp",)),
)
# A B12 injection or tablet ordered as a ServiceRequest (a nurse's task) is a treatment, not a B12 test.
_ORDER_TREATMENT = re.compile(r"inject|\binj\b|infusion|tablet|administ|\bim\b|\bshot\b")

# --- medicines ----------------------------------------------------------------------------------------

B12_THERAPY = "b12-therapy"
B12_SUPPLEMENT = "b12-supplement"
IRON_THERAPY = "iron-therapy"

_MEDICATION_CODES: dict[tuple[str, str], str] = {
    (RXNORM, "309594"): B12_THERAPY,
    (RXNORM, "2001499"): B12_THERAPY,
    (RXNORM, "310325"): IRON_THERAPY,
}
# ATC codes by prefix (the class code covers its members).
_ATC_PREFIXES: tuple[tuple[str, str], ...] = (
    ("B03BA", B12_THERAPY),
    ("A11A", B12_SUPPLEMENT),
    ("A11B", B12_SUPPLEMENT),
    ("A11D", B12_SUPPLEMENT),
    ("A11E", B12_SUPPLEMENT),
    ("B03A", IRON_THERAPY),
)
# B12 named as a product: its forms, "vitamin B12" and "B-12", and brands that name no form (Nascobal,
# CaloMist, Cytamen/Neo-Cytamen, Cobalin-H). A name followed by "deficiency", "level" or "screening" is a
# diagnosis or a test written in the wrong field, not a product.
_B12_TEXT = re.compile(
    r"(?:cobalamin|cobamamide|\bvit(?:amin|\.)? ?b ?-?12\b|\bb-?12\b)"
    r"(?! ?(?:deficiency|level|screen|test|assay))|\b(?:nascobal|calomist|cytamen|cobalin)"
)
# Products with B12 among other vitamins: multivitamins ("multiple vitamins", "MVI", and common brands),
# B-complex and renal vitamins (a B-complex with C), prenatal vitamins.
_SUPPLEMENT_TEXT = re.compile(
    r"multi-? ?vit(?:amin|\b)|multiple vitamin|\bm\.?v\.?i\b|\bb[ -]?complex\b|prenatal|"
    r"renal (?:multi-? ?)?vitamin|"
    r"\b(?:centrum|one-a-day|theragran|nephro-?vite|rena-?vite|nephrocaps|dialyvite|infuvite)"
)
# Iron salts and complexes, and IV and oral iron brands that name no salt. Not the chelators (deferasirox,
# deferoxamine, deferiprone: they remove iron) nor sucroferric oxyhydroxide (a phosphate binder whose iron
# is not absorbed).
_IRON_TEXT = re.compile(
    r"\bferr(?:ous|ic)\b|\bfeso4\b|ferumoxytol|carboxymaltose|derisomaltose|"
    r"\biron (?:sucrose|dextran|polymaltose|isomaltoside|polysaccharide|protein succinylate|bisglycinate)|"
    r"\b(?:polysaccharide|carbonyl|heme|haem)[ -]iron\b|"
    r"\b(?:venofer|injectafer|ferinject|feraheme|rienso|infed|cosmofer|ferrlecit|monoferric|monofer|"
    r"feraccru|accrufer|slow[ -]?fe|feosol|fergon|niferex)\b"
)
# "Iron" as the product itself ("Iron 65 mg", "Iron supplement", "IV iron infusion"). Not read in a
# multivitamin or prenatal vitamin, whose few milligrams of iron are not iron therapy.
_PLAIN_IRON_TEXT = re.compile(
    r"(?:^|\| )iron(?:$| \|)|\b(?:iv|intravenous|oral) iron\b|"
    r"\biron (?:\d|tab|cap|supplement|liquid|elixir|drops|syrup|infusion|injection)"
)

# --- conditions ---------------------------------------------------------------------------------------

B12_DEFICIENCY = "b12-deficiency"
PERNICIOUS_ANAEMIA = "pernicious-anaemia"
MEGALOBLASTIC = "megaloblastic-anaemia"
IRON_DEFICIENCY_ANAEMIA = "iron-deficiency-anaemia"
HAEMOCHROMATOSIS = "haemochromatosis"
LIVER_DISEASE = "liver-disease"
LIVER_CANCER = "liver-cancer"
CKD = "chronic-kidney-disease"
MPN = "myeloproliferative-neoplasm"
AUTOIMMUNE_GASTRITIS = "autoimmune-gastritis"
COELIAC = "coeliac-disease"

CONDITION_NAMES: dict[str, str] = {
    B12_DEFICIENCY: "B12 deficiency / pernicious anaemia",
    PERNICIOUS_ANAEMIA: "pernicious anaemia",
    MEGALOBLASTIC: "megaloblastic anaemia",
    IRON_DEFICIENCY_ANAEMIA: "iron deficiency anaemia",
    HAEMOCHROMATOSIS: "hereditary haemochromatosis",
    LIVER_DISEASE: "chronic liver disease",
    LIVER_CANCER: "liver cell carcinoma",
    CKD: "chronic kidney disease",
    MPN: "myeloproliferative neoplasm",
    AUTOIMMUNE_GASTRITIS: "chronic atrophic (autoimmune) gastritis",
    COELIAC: "coeliac disease",
}

_SNOMED_CONDITIONS: dict[str, tuple[str, ...]] = {
    "190634004": (B12_DEFICIENCY,),
    "84027009": (B12_DEFICIENCY, PERNICIOUS_ANAEMIA),
    "53165003": (MEGALOBLASTIC,),
    "87522002": (IRON_DEFICIENCY_ANAEMIA,),
    "35400008": (HAEMOCHROMATOSIS,),
    "19943007": (LIVER_DISEASE,),
    "709044004": (CKD,),
    "425333006": (MPN,),
    "84568007": (AUTOIMMUNE_GASTRITIS,),
    "396331005": (COELIAC,),
}
# ICD-10(-CM) codes without their dot; an entry matches that code and every code below it.
_ICD10_PREFIXES: tuple[tuple[str, str], ...] = (
    ("E538", B12_DEFICIENCY),
    ("D51", B12_DEFICIENCY),
    ("D510", PERNICIOUS_ANAEMIA),
    ("D531", MEGALOBLASTIC),
    ("D50", IRON_DEFICIENCY_ANAEMIA),
    ("E83110", HAEMOCHROMATOSIS),
    ("E83119", HAEMOCHROMATOSIS),
    ("K703", LIVER_DISEASE),
    ("K746", LIVER_DISEASE),
    ("B18", LIVER_DISEASE),
    ("C220", LIVER_CANCER),
    ("N18", CKD),
    ("D45", MPN),
    ("D471", MPN),
    ("D473", MPN),
    ("D7581", MPN),
    ("K294", AUTOIMMUNE_GASTRITIS),
    ("K900", COELIAC),
)
_AN = r"an(?:a)?emia"
_B12 = r"(?:vit(?:amin|\.)? ?)?b ?-?12"
_CONDITION_TEXT: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"pernicious {_AN}|{_AN},? pernicious"), PERNICIOUS_ANAEMIA),
    (re.compile(rf"\b{_B12}[ -]deficiency|cobalamin deficiency|deficiency of {_B12}\b"), B12_DEFICIENCY),
    (re.compile(rf"megaloblastic {_AN}"), MEGALOBLASTIC),
    (
        re.compile(rf"iron[ -]deficiency {_AN}|{_AN},? (?:due to |secondary to )?iron[ -]deficiency"),
        IRON_DEFICIENCY_ANAEMIA,
    ),
    (re.compile(r"ha?emochromatosis"), HAEMOCHROMATOSIS),
    (re.compile(r"cirrhosis|chronic (viral )?hepatitis"), LIVER_DISEASE),
    (re.compile(r"hepatocellular carcinoma|liver cell carcinoma"), LIVER_CANCER),
    (re.compile(r"chronic kidney disease"), CKD),
    (re.compile(r"myeloproliferative|polycyth(a)?emia vera|essential thrombocyth|myelofibrosis"), MPN),
    (re.compile(r"autoimmune gastritis|atrophic gastritis"), AUTOIMMUNE_GASTRITIS),
    (re.compile(r"co?eliac|celiac"), COELIAC),
)
# Text that records something other than the patient having the condition now, wherever it stands: a past or
# a relative's condition, a doubt or a question to answer, a screen, a risk, a carrier of a gene. Such text
# silencing a card is the unsafe way (a queried pernicious anaemia must not stop the antibody tests that
# would confirm it), so any of these words sets the whole text aside.
_NOT_THE_CONDITION = re.compile(
    r"history|\bh/o\b|\bhx\b|\bfh\b|\bprevious\b|\bpast\b|\bresolved\b|suspect|suspicion|\?|\bquery\b|"
    r"\bpossibl|\bprobabl|\bunlikely\b|\brule[sd]?[ -]out\b|\br/o\b|exclud|not confirmed|unconfirmed|"
    r"screen|risk of|carrier|negative"
)
# A negation denies the condition named after it ("no evidence of pernicious anaemia"); one that follows a
# name is about something else ("iron deficiency anaemia, no active bleeding"). "non-" denies only the word
# it is joined to: "non-coeliac" gluten sensitivity, but "non-alcoholic" cirrhosis.
_DENIED_BEFORE = re.compile(r"\b(?:no|not|without|denies)\b")
_JOINED_NON = re.compile(r"\bnon[ -]?$")


def _named_in_text(pattern: re.Pattern[str], text: str) -> bool:
    """Whether ``text`` names the condition at least once without a negation before that name."""
    return any(
        not _DENIED_BEFORE.search(text, 0, match.start()) and not _JOINED_NON.search(text[: match.start()])
        for match in pattern.finditer(text)
    )


CONDITION_CLASSES = frozenset(CONDITION_NAMES)
MEDICATION_CLASSES = frozenset({B12_THERAPY, B12_SUPPLEMENT, IRON_THERAPY})


@dataclass(frozen=True)
class ValueSets:
    """Code lookups built once at start: defaults plus a site's additions."""

    analyte_codes: Mapping[tuple[str, str], str]
    medication_codes: Mapping[tuple[str, str], str]
    condition_codes: Mapping[tuple[str, str], str]
    # Classifying by text costs a dozen regular expressions; the same concepts recur in every chart.
    _memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def _remember(self, key: Any, compute: Any) -> Any:
        try:
            return self._memo[key]
        except KeyError:
            pass
        except TypeError:
            return compute()
        if len(self._memo) > MEMO_LIMIT:
            self._memo.clear()
        value = self._memo[key] = compute()
        return value

    def order_analytes(self, concept: Any) -> set[str]:
        """The analytes a ServiceRequest's code orders, by code and, failing that, by its text."""
        found = {self.analyte_codes[pair] for pair in codings(concept) if pair in self.analyte_codes}
        if found:
            return found
        text = concept_text(concept)
        for pattern, analytes in _ORDER_TEXT:
            if pattern.search(text):
                found.update(analytes)
        if "b12" in found and _ORDER_TREATMENT.search(text):
            found.discard("b12")
        return found

    def medication_classes(self, concepts: Iterable[Any]) -> frozenset[str]:
        """B12 therapy, B12-containing supplement, iron therapy: by code, ATC class or text.

        A multivitamin or B-complex mentioning B12 is a supplement, not B12 therapy.
        """
        concepts = list(concepts)
        return self._remember(
            ("medication", *map(_concept_key, concepts)), lambda: self._medication(concepts)
        )

    def _medication(self, concepts: list[Any]) -> frozenset[str]:
        found: set[str] = set()
        texts = []
        for concept in concepts:
            for system, code in codings(concept):
                known = self.medication_codes.get((system, code))
                if known is not None:
                    found.add(known)
                if system in ATC_SYSTEMS:
                    found.update(cls for prefix, cls in _ATC_PREFIXES if code.upper().startswith(prefix))
            text = concept if isinstance(concept, str) else concept_text(concept)
            if text:
                texts.append(text)
        joined = " | ".join(texts)
        if joined:
            supplement = _SUPPLEMENT_TEXT.search(joined) is not None
            if supplement:
                found.add(B12_SUPPLEMENT)
            elif _B12_TEXT.search(joined):
                found.add(B12_THERAPY)
            if _IRON_TEXT.search(joined) or (not supplement and _PLAIN_IRON_TEXT.search(joined)):
                found.add(IRON_THERAPY)
        if B12_SUPPLEMENT in found:
            found.discard(B12_THERAPY)
        return frozenset(found)

    def condition_classes(self, concept: Any) -> set[str]:
        return set(
            self._remember(("condition", _concept_key(concept)), lambda: frozenset(self._condition(concept)))
        )

    def _condition(self, concept: Any) -> set[str]:
        found: set[str] = set()
        for system, code in codings(concept):
            known = self.condition_codes.get((system, code))
            if known is not None:
                found.add(known)
            found.update(_verified_condition_classes(system, code))
        if not found:
            text = concept_text(concept)
            if text and not _NOT_THE_CONDITION.search(text):
                found.update(cls for pattern, cls in _CONDITION_TEXT if _named_in_text(pattern, text))
        # Pernicious anaemia is a B12 deficiency (as SNOMED 84027009, ICD-10 D51.0 and the text say): a site's
        # own pernicious anaemia code must explain B12 injections as the verified codes do.
        if PERNICIOUS_ANAEMIA in found:
            found.add(B12_DEFICIENCY)
        return found


MEMO_LIMIT = 20_000


def _concept_key(concept: Any) -> Any:
    """A hashable summary of a concept (its codings and text) for the classification memo."""
    if isinstance(concept, str):
        return concept
    if not isinstance(concept, dict):
        return None
    items = concept.get("coding")
    displays = (
        tuple(c.get("display") for c in items if isinstance(c, dict)) if isinstance(items, list) else ()
    )
    text = concept.get("text")
    return (tuple(codings(concept)), text if isinstance(text, str) else None, displays)


def _verified_condition_classes(system: str, code: str) -> tuple[str, ...]:
    if system == SNOMED:
        return _SNOMED_CONDITIONS.get(code, ())
    if system in ICD10_SYSTEMS:
        bare = code.replace(".", "").upper()
        return tuple(cls for prefix, cls in _ICD10_PREFIXES if bare.startswith(prefix))
    return ()


def _verified_classes(pair: tuple[str, str]) -> set[str]:
    """The value sets a code belongs to by the verified lists (LOINC, RxNorm, ATC classes, SNOMED CT, ICD-10
    chapters), whatever its kind: a site's entry is checked against all of them."""
    system, code = pair
    found: set[str] = set()
    if system == LOINC:
        found.update(analyte for analyte, loincs in ANALYTE_LOINC.items() if code in loincs)
    if pair in _MEDICATION_CODES:
        found.add(_MEDICATION_CODES[pair])
    if system in ATC_SYSTEMS:
        found.update(cls for prefix, cls in _ATC_PREFIXES if code.upper().startswith(prefix))
    found.update(_verified_condition_classes(system, code))
    return found


def _parse_site_code(value_set: str, entry: Any) -> tuple[str, str]:
    if not isinstance(entry, str) or entry.count("|") != 1:
        raise ValueError(f'codes.{value_set}: entry {entry!r} must be a "system|code" string')
    system, code = (part.strip() for part in entry.split("|"))
    if not system or not code:
        raise ValueError(f"codes.{value_set}: entry {entry!r} needs both a system and a code")
    return (system, code)


def build_value_sets(site_codes: Any) -> ValueSets:
    """The defaults plus a site's ``codes`` section: ``{"<value set>": ["system|code", ...]}``.

    Value sets are the analytes (``b12``, ``ferritin``, ...), the medicine classes and the condition
    classes named in this module.
    """
    analytes = {(LOINC, code): analyte for analyte, loincs in ANALYTE_LOINC.items() for code in loincs}
    medications = dict(_MEDICATION_CODES)
    conditions: dict[tuple[str, str], str] = {}
    if site_codes is None:
        site_codes = {}
    if not isinstance(site_codes, dict):
        raise ValueError('the "codes" section must be an object of value set name -> ["system|code", ...]')
    known = sorted(set(ANALYTE_LOINC) | MEDICATION_CLASSES | CONDITION_CLASSES)
    # Which value set the site put each code in, to refuse one code in two.
    placed: dict[tuple[str, str], str] = {}
    for value_set, entries in site_codes.items():
        if not isinstance(entries, list):
            raise ValueError(f'codes.{value_set} must be a list of "system|code" strings')
        pairs = [_parse_site_code(value_set, entry) for entry in entries]
        if value_set in ANALYTE_LOINC:
            target: dict[tuple[str, str], str] = analytes
        elif value_set in MEDICATION_CLASSES:
            target = medications
        elif value_set in CONDITION_CLASSES:
            target = conditions
        else:
            raise ValueError(f"codes.{value_set}: unknown value set; known value sets are {', '.join(known)}")
        for pair in pairs:
            # A site adds codes; it cannot move one. A verified ferritin code listed as B12 would read every
            # ferritin as a B12 (and a ferritin of 150 as a B12 deficiency).
            verified = _verified_classes(pair)
            if verified and value_set not in verified:
                raise ValueError(
                    f"codes.{value_set}: {'|'.join(pair)} is already a verified code of "
                    f"{', '.join(sorted(verified))}; a site may add codes, not move one to another value set"
                )
            other = placed.setdefault(pair, value_set)
            if other != value_set:
                raise ValueError(
                    f"codes.{value_set}: {'|'.join(pair)} is also listed in codes.{other}; a code belongs to "
                    "one value set"
                )
            target[pair] = value_set
    return ValueSets(analyte_codes=analytes, medication_codes=medications, condition_codes=conditions)


def prefetch_loinc_codes(config: Any, group: str) -> list[str]:
    """The LOINC codes a prefetch group queries: the defaults plus a site's LOINC additions."""
    members = PREFETCH_GROUPS[group]
    value_sets: ValueSets = config.value_sets
    return sorted(
        code
        for (system, code), analyte in value_sets.analyte_codes.items()
        if system == LOINC and analyte in members
    )


def prefetch_code_tokens(config: Any, group: str) -> list[str]:
    """The ``system|code`` tokens a prefetch group queries: the defaults plus every site addition, LOINC or
    local. `prefetch_loinc_codes` leaves a site's local codes (a hospital's own ferritin code) out of the
    query, so their results reach the rules only when an EHR sends them unasked."""
    members = PREFETCH_GROUPS[group]
    value_sets: ValueSets = config.value_sets
    return sorted(
        f"{_search_escaped(system)}|{_search_escaped(code)}"
        for (system, code), analyte in value_sets.analyte_codes.items()
        if analyte in members
    )


_SEARCH_RESERVED = str.maketrans({"\\": "\\\\", ",": "\\,", "|": "\\|", "$": "\\$"})


def _search_escaped(value: str) -> str:
    """A token part with FHIR search's reserved characters escaped with a backslash: a local code holding a
    comma would otherwise split the code list. Percent-encoding for the URL is the template's (a space or an
    ampersand in a local code needs it)."""
    return value.translate(_SEARCH_RESERVED)
