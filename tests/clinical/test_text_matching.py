"""Medicines, diagnoses and lab orders known only by their text: the names EHRs send, read as clinicians do.

Codes are matched first (`test_config_and_codes`); this table is what happens when no code is known, which in
real data is most of the time (local order catalogues, patient-reported supplements, free-text problem lists).
A row whose reading is a judgement (which way is safer for the cards) says why beside it.
"""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.clinical import codes
from tests.clinical.builders import (
    CYANO,
    by_topic,
    condition,
    draft_b12,
    med,
    obs,
    run,
    topics,
)

THERAPY = {codes.B12_THERAPY}
SUPPLEMENT = {codes.B12_SUPPLEMENT}
IRON = {codes.IRON_THERAPY}
NONE: set[str] = set()

MEDICINES: list[tuple[str, set[str]]] = [
    # B12 alone, every salt and form, as RxNorm, dm+d and local catalogues write it.
    ("cyanocobalamin 1000 MCG/ML Injectable Solution", THERAPY),
    ("Cyanocobalamin 1,000 mcg sublingual tablet", THERAPY),
    ("cyanocobalamin 0.5 MG/ACTUAT Metered Dose Nasal Spray [Nascobal]", THERAPY),
    ("Nascobal", THERAPY),
    ("CaloMist nasal spray", THERAPY),
    ("hydroxocobalamin 1 MG/ML Injectable Solution", THERAPY),
    ("Neo-Cytamen 1000micrograms/1ml solution for injection", THERAPY),
    ("Cobalin-H 1000micrograms/1ml", THERAPY),
    ("Cytamen", THERAPY),
    ("methylcobalamin 5000 mcg lozenge", THERAPY),
    ("Mecobalamin 500 mcg", THERAPY),
    ("adenosylcobalamin 1 mg", THERAPY),
    ("Cobamamide", THERAPY),
    ("Vitamin B-12", THERAPY),
    ("Vitamin B 12 5 MG/ML Injectable Solution", THERAPY),
    ("Vit B12", THERAPY),
    ("Vit. B-12 1000mcg", THERAPY),
    ("B12 1000mcg", THERAPY),
    ("VITAMIN B-12 1000 MCG PO TABS", THERAPY),
    ("Vitamin B12 (cyanocobalamin) 1,000 mcg tablet", THERAPY),
    ("Cyanocobalamin (for B12 deficiency)", THERAPY),
    # Combinations that are mostly B12 by dose: read as therapy, the safer way (a missed start would miss the
    # iron-studies reminder; a B12 therapy "on file" also softens the supplement review). ATC codes say
    # supplement (A11DB) for a B1/B6/B12 product and the code then wins.
    ("Folic acid 1 mg / cyanocobalamin 1 mg tablet", THERAPY),
    ("folic acid 2.5 MG / pyridoxine hydrochloride 25 MG / cyanocobalamin 2 MG Oral Tablet", THERAPY),
    ("Vitamin B1-B6-B12", THERAPY),
    # Supplements that contain B12 among other vitamins.
    ("B-complex", SUPPLEMENT),
    ("Vitamin B Complex with C and Folic Acid", SUPPLEMENT),
    ("Super B Complex", SUPPLEMENT),
    ("B-Complex with B-12", SUPPLEMENT),
    ("Prenatal Vitamins", SUPPLEMENT),
    ("Prenatal Vitamin Plus Low Iron", SUPPLEMENT),  # its iron is a multivitamin's, not iron therapy
    ("Multivitamin", SUPPLEMENT),
    ("Multi-Vitamin with minerals", SUPPLEMENT),
    ("Multivitamins with B12", SUPPLEMENT),
    ("Multivit tablets", SUPPLEMENT),
    ("multiple vitamins-minerals (THERAGRAN-M) tablet", SUPPLEMENT),
    ("Multiple Vitamin", SUPPLEMENT),
    ("MVI", SUPPLEMENT),
    ("M.V.I.-12 injection", SUPPLEMENT),
    ("Infuvite Adult", SUPPLEMENT),
    ("Centrum Silver", SUPPLEMENT),
    ("One-A-Day Women's", SUPPLEMENT),
    ("Renal vitamin", SUPPLEMENT),
    ("Nephro-Vite Rx", SUPPLEMENT),
    ("Rena-Vite", SUPPLEMENT),
    ("Nephrocaps", SUPPLEMENT),
    ("Dialyvite 800", SUPPLEMENT),
    ("Multivitamin with iron 18 mg", SUPPLEMENT),  # a multivitamin's iron is not iron therapy
    # Not B12: other B vitamins, folic acid, and B12 named as a test or a diagnosis rather than a product.
    ("Vitamin B1 100 mg", NONE),
    ("Thiamine 100 mg", NONE),
    ("Vitamin B6 50 mg", NONE),
    ("Pyridoxine 25 mg", NONE),
    ("Vitamin B Compound Strong tablets", NONE),  # UK: B1, B2 and nicotinamide, no B12
    ("Folic acid 5 mg", NONE),
    ("B-12 deficiency screening", NONE),
    ("Vitamin B12 level", NONE),
    ("Vitamin D3 1000 IU", NONE),
    ("Atorvastatin 20 mg one a day", NONE),  # a dose, not the One-A-Day brand
    # Iron: salts, IV products by generic and brand name, and plain "iron" products.
    ("ferrous sulfate 325 MG Oral Tablet", IRON),
    ("Ferrous sulphate 200 mg", IRON),
    ("Ferrous fumarate 210 mg", IRON),
    ("Ferrous gluconate 324 mg", IRON),
    ("Ferrous bisglycinate 25 mg", IRON),
    ("Ferric citrate 1 GM Oral Tablet", IRON),
    ("Ferric maltol 30 mg", IRON),
    ("Feraccru", IRON),
    ("Accrufer 30 mg capsule", IRON),
    ("iron sucrose 20 MG/ML Injectable Solution", IRON),
    ("Venofer", IRON),
    ("ferric carboxymaltose 50 MG/ML Injectable Solution", IRON),
    ("Injectafer", IRON),
    ("Ferinject 500 mg/10 ml", IRON),
    ("ferumoxytol 510 MG in 17 ML Injection", IRON),
    ("Feraheme", IRON),
    ("Rienso", IRON),
    ("iron dextran 50 MG/ML Injectable Solution", IRON),
    ("INFeD", IRON),
    ("CosmoFer", IRON),
    ("sodium ferric gluconate complex 12.5 MG/ML", IRON),
    ("Ferrlecit", IRON),
    ("ferric derisomaltose 100 mg/mL", IRON),
    ("Monoferric", IRON),
    ("Monofer", IRON),
    ("Polysaccharide-Iron Complex 150 mg", IRON),
    ("polysaccharide iron complex", IRON),
    ("Niferex 150", IRON),
    ("carbonyl iron 45 mg", IRON),
    ("heme iron polypeptide 12 mg", IRON),
    ("iron protein succinylate 800 mg", IRON),
    ("iron bisglycinate chelate", IRON),
    ("Iron 65 mg", IRON),
    ("Iron 325 mg tablet", IRON),
    ("Iron supplement", IRON),
    ("Iron", IRON),
    ("IV iron infusion", IRON),
    ("FeSO4 325 mg", IRON),
    ("Slow Fe 45 mg", IRON),
    ("Slow-Fe", IRON),
    ("Feosol", IRON),
    ("Fergon", IRON),
    ("Ferrous sulfate 325 mg and Vitamin B12 1000 mcg", IRON | THERAPY),
    # Not iron: chelators (the opposite), phosphate binders whose iron is not absorbed, tests and words.
    ("deferasirox 360 mg tablet", NONE),
    ("Exjade", NONE),
    ("Jadenu", NONE),
    ("deferoxamine 500 mg injection", NONE),
    ("Desferal", NONE),
    ("Desferrioxamine", NONE),
    ("deferiprone 500 mg", NONE),
    ("Ferriprox", NONE),
    ("Iron chelator (deferasirox)", NONE),
    ("Sucroferric oxyhydroxide 500 mg", NONE),
    ("Velphoro", NONE),
    ("Iron studies", NONE),
    ("Ferritin", NONE),
    ("Ironing board", NONE),
]


@pytest.mark.parametrize(("text", "expected"), MEDICINES)
def test_medicine_text(text: str, expected: set[str]) -> None:
    assert set(codes.build_value_sets(None).medication_classes([{"text": text}])) == expected


@pytest.mark.parametrize(("text", "expected"), MEDICINES)
def test_medicine_display_and_reference_display_read_as_text(text: str, expected: set[str]) -> None:
    """The same names as a coding's display (a local code) and as a medicationReference's display."""
    value_sets = codes.build_value_sets(None)
    local = {"coding": [{"system": "http://pharmacy.example.org/formulary", "code": "X1", "display": text}]}
    assert set(value_sets.medication_classes([local])) == expected
    assert set(value_sets.medication_classes([text.lower()])) == expected


def test_a_medication_is_read_with_its_ingredients() -> None:
    """A branded Medication names no vitamin; its ingredients do."""
    brand = {"text": "Foltabs 800"}
    ingredients = [{"text": "Folic acid 0.8 mg"}, {"text": "Cyanocobalamin 0.115 mg"}, {"text": "Vitamin B6"}]
    assert set(codes.build_value_sets(None).medication_classes([brand, *ingredients])) == THERAPY
    prenatal = [{"text": "Prenatal Plus"}, {"text": "Cyanocobalamin 12 mcg"}, {"text": "Iron 27 mg"}]
    assert set(codes.build_value_sets(None).medication_classes(prenatal)) == SUPPLEMENT


CONDITIONS: list[tuple[str, set[str]]] = [
    # B12 deficiency and pernicious anaemia in their usual spellings.
    ("Pernicious anaemia", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Pernicious anemia (disorder)", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Addisonian pernicious anaemia", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Anemia, pernicious", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Pernicious anaemia with no neurological involvement", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("Pernicious anaemia on B12 injections", {codes.PERNICIOUS_ANAEMIA, codes.B12_DEFICIENCY}),
    ("B12 deficiency anaemia", {codes.B12_DEFICIENCY}),
    ("Vitamin B12 deficiency (disorder)", {codes.B12_DEFICIENCY}),
    ("Vitamin B-12 deficiency", {codes.B12_DEFICIENCY}),
    ("Vit B12 deficiency", {codes.B12_DEFICIENCY}),
    ("B12-deficiency neuropathy", {codes.B12_DEFICIENCY}),
    ("Cobalamin deficiency", {codes.B12_DEFICIENCY}),
    ("Deficiency of vitamin B12", {codes.B12_DEFICIENCY}),
    ("Megaloblastic anaemia", {codes.MEGALOBLASTIC}),
    ("Megaloblastic anemia due to folate deficiency", {codes.MEGALOBLASTIC}),
    # Iron deficiency anaemia, and iron deficiency that is not anaemia.
    ("Iron deficiency anaemia", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron-deficiency anemia", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Anemia, iron deficiency", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Anaemia due to iron deficiency", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron deficiency anemia secondary to blood loss (chronic)", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron deficiency anaemia, no active bleeding", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron deficiency anaemia not responding to oral iron", {codes.IRON_DEFICIENCY_ANAEMIA}),
    ("Iron deficiency without anaemia", NONE),
    ("Iron deficiency without anemia", NONE),
    ("Iron deficiency", NONE),
    # Haemochromatosis, and carriers of its gene (who are not iron-loaded).
    ("Haemochromatosis", {codes.HAEMOCHROMATOSIS}),
    ("Hereditary hemochromatosis", {codes.HAEMOCHROMATOSIS}),
    ("HFE-related hemochromatosis", {codes.HAEMOCHROMATOSIS}),
    ("Hemochromatosis carrier", NONE),
    ("Carrier of haemochromatosis gene", NONE),
    # Other classes, and the words that contain their patterns by accident.
    ("Coeliac disease", {codes.COELIAC}),
    ("Celiac disease", {codes.COELIAC}),
    ("Non-celiac gluten sensitivity", NONE),
    ("Gluten sensitivity, non-coeliac", NONE),
    ("Non-alcoholic cirrhosis", {codes.LIVER_DISEASE}),
    ("Non-alcoholic steatohepatitis with cirrhosis", {codes.LIVER_DISEASE}),
    ("Cirrhosis, no hepatocellular carcinoma", {codes.LIVER_DISEASE}),
    ("Anemia in chronic kidney disease", {codes.CKD}),
    ("Chronic kidney disease stage 3, not on dialysis", {codes.CKD}),
    ("Macrocytic anaemia", NONE),
    ("Anaemia of chronic disease", NONE),
    # Not the patient's condition now: history, family, doubt, exclusion, screening, risk, resolution.
    ("History of pernicious anaemia", NONE),
    ("Hx of pernicious anaemia", NONE),
    ("H/O B12 deficiency", NONE),
    ("Personal history of iron deficiency anemia", NONE),
    ("Previous iron deficiency anaemia", NONE),
    ("Family history of pernicious anemia", NONE),
    ("FH: pernicious anaemia", NONE),
    ("Suspected pernicious anaemia", NONE),
    ("?pernicious anaemia", NONE),
    ("? Pernicious anaemia", NONE),
    ("B12 deficiency?", NONE),
    ("Query iron deficiency anaemia", NONE),
    ("Possible B12 deficiency", NONE),
    ("Probable iron deficiency anaemia", NONE),
    ("R/O pernicious anemia", NONE),
    ("Rule out coeliac disease", NONE),
    ("Pernicious anaemia ruled out", NONE),
    ("Pernicious anaemia excluded", NONE),
    ("Coeliac disease excluded", NONE),
    ("Pernicious anaemia not confirmed", NONE),
    ("No evidence of pernicious anaemia", NONE),
    ("Not pernicious anaemia", NONE),
    ("Macrocytosis without B12 deficiency", NONE),
    ("Iron deficiency anemia - negative", NONE),
    ("Screening for B12 deficiency", NONE),
    ("Coeliac screen", NONE),
    ("At risk of iron deficiency anaemia", NONE),
    ("Risk of B12 deficiency (metformin)", NONE),
    ("Pernicious anaemia - resolved", NONE),  # as clinicalStatus "resolved" is read
]


@pytest.mark.parametrize(("text", "expected"), CONDITIONS)
def test_condition_text(text: str, expected: set[str]) -> None:
    concept = {"coding": [{"system": "http://problems.example.org", "code": "P1"}], "text": text}
    assert codes.build_value_sets(None).condition_classes(concept) == expected


@pytest.mark.parametrize(("text", "expected"), CONDITIONS)
def test_condition_display_reads_as_text(text: str, expected: set[str]) -> None:
    local = {"coding": [{"system": "http://problems.example.org", "code": "P1", "display": text}]}
    assert codes.build_value_sets(None).condition_classes(local) == expected


def test_a_doubt_in_the_text_also_doubts_the_display_after_it() -> None:
    """An EHR that pairs a local code's plain display with the clinician's "?": the clinician's word wins."""
    concept = {
        "coding": [{"system": "http://problems.example.org", "code": "PA", "display": "Pernicious anaemia"}],
        "text": "?PA - pernicious anaemia",
    }
    assert codes.build_value_sets(None).condition_classes(concept) == NONE


def test_a_verified_code_is_read_whatever_its_text_says() -> None:
    """Text qualifiers decide text matches only: a coded diagnosis is read by its code and status."""
    coded = {"coding": [{"system": codes.SNOMED, "code": "84027009"}], "text": "?pernicious anaemia"}
    assert codes.build_value_sets(None).condition_classes(coded) == {
        codes.PERNICIOUS_ANAEMIA,
        codes.B12_DEFICIENCY,
    }


ORDERS: list[tuple[str, set[str]]] = [
    ("Vitamin B12 level", {"b12"}),
    ("B12 and folate", {"b12"}),
    ("Vitamin B12 and Folate, serum", {"b12"}),
    ("Cobalamin (vitamin B12) [Mass/volume] in Serum or Plasma", {"b12"}),
    ("Ferritin", {"ferritin"}),
    ("Serum ferritin", {"ferritin"}),
    ("Iron panel", {"iron", "tibc", "tsat"}),
    ("Iron studies", {"iron", "tibc", "tsat"}),
    ("Iron profile", {"iron", "tibc", "tsat"}),
    ("Iron studies (ferritin, iron, TIBC, transferrin saturation)", {"ferritin", "iron", "tibc", "tsat"}),
    ("Iron, TIBC and transferrin saturation", {"iron", "tibc", "tsat"}),
    ("Iron and TIBC", {"iron", "tibc"}),
    ("Iron/TIBC", {"iron", "tibc"}),
    ("Iron + TIBC", {"iron", "tibc"}),
    ("Iron and Total Iron Binding Capacity", {"iron", "tibc"}),
    ("Iron, Total and Total Iron Binding Capacity", {"iron", "tibc"}),
    ("Ferritin, iron, TIBC", {"ferritin", "iron", "tibc"}),
    ("TIBC", {"tibc"}),
    ("Total iron binding capacity", {"tibc"}),
    ("Serum iron", {"iron"}),
    ("Iron, serum", {"iron"}),
    ("Transferrin saturation", {"tsat"}),
    ("Iron saturation", {"tsat"}),
    ("TSAT", {"tsat"}),
    ("Methylmalonic acid", {"mma"}),
    ("MMA, serum", {"mma"}),
    ("CRP", {"crp"}),
    ("C-reactive protein", {"crp"}),
    ("C reactive protein", {"crp"}),
    ("hs-CRP", {"crp"}),
    ("hsCRP", {"crp"}),
    ("High sensitivity CRP", {"crp"}),
    ("Ferritin and CRP", {"ferritin", "crp"}),
    # Not a lab test of ours: treatments ordered as a ServiceRequest, other specimens, other tests.
    ("B12 injection", NONE),
    ("Vitamin B12 injection IM monthly", NONE),
    ("Administer cyanocobalamin", NONE),
    ("Iron infusion", NONE),
    ("Ferritin 4 weeks after iron infusion", {"ferritin"}),
    ("Liver iron concentration MRI", NONE),
    ("Bone marrow iron stain", NONE),
    ("Urine iron", NONE),
    ("Homocysteine", NONE),
    ("ESR", NONE),
    ("Liver function tests", NONE),
    ("Iron deficiency screen", NONE),
]


@pytest.mark.parametrize(("text", "expected"), ORDERS)
def test_order_text(text: str, expected: set[str]) -> None:
    assert codes.build_value_sets(None).order_analytes({"text": text}) == expected


# --- what the readings change on the cards ----------------------------------------------------------------


def _codes_suggested(finding: Any) -> set[str]:
    return {
        a.resource["code"]["coding"][0]["code"]
        for p in finding.proposals
        for a in p.actions
        if a.type == "create" and a.resource is not None
    }


def _local_condition(text: str) -> dict[str, Any]:
    return condition("P1", system="http://problems.example.org", text=text)


def test_a_queried_pernicious_anaemia_does_not_silence_the_tests_that_would_confirm_it() -> None:
    labs = (obs("b12", 140, 5), obs("ferritin", 12, 5))
    queried = by_topic(run(*labs, _local_condition("?pernicious anaemia")), "combined-b12-iron-deficiency")
    assert {"31444-3", "40960-7", "2333-3"} <= _codes_suggested(queried)
    known = by_topic(run(*labs, _local_condition("Pernicious anaemia")), "combined-b12-iron-deficiency")
    assert {"31444-3", "40960-7", "2333-3"}.isdisjoint(_codes_suggested(known))


def test_non_coeliac_gluten_sensitivity_still_gets_a_ttg() -> None:
    labs = (obs("b12", 140, 5), obs("ferritin", 12, 5))
    sensitivity = _local_condition("Non-coeliac gluten sensitivity")
    finding = by_topic(run(*labs, sensitivity), "combined-b12-iron-deficiency")
    assert "31017-7" in _codes_suggested(finding)


def test_a_branded_multivitamin_explains_a_high_b12() -> None:
    statement = med({"text": "Centrum Silver"}, 200, kind="MedicationStatement")
    assert topics(run(obs("b12", 1150, 10), statement)) == ["elevated-b12-supplement-review"]


def test_a_brand_name_iv_iron_is_iron_therapy_on_the_card() -> None:
    finding = by_topic(
        run(obs("b12", 140, 5), obs("ferritin", 12, 5), med({"text": "Venofer 200 mg IV"}, 30)),
        "combined-b12-iron-deficiency",
    )
    assert "Iron therapy on file: Venofer 200 mg IV" in finding.detail


def test_a_chelator_is_not_iron_therapy_on_the_card() -> None:
    finding = by_topic(
        run(obs("b12", 140, 5), obs("ferritin", 12, 5), med({"text": "Deferasirox 360 mg"}, 30)),
        "combined-b12-iron-deficiency",
    )
    assert "Iron therapy on file" not in finding.detail


def test_iron_and_tibc_ordered_by_text_with_a_ferritin_are_iron_studies() -> None:
    """Iron studies: a ferritin with a TSAT, or with a serum iron and TIBC (a local "Iron and TIBC" order)."""
    pending = [
        {
            "resourceType": "ServiceRequest",
            "id": f"sr-{name}",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "code": {"text": name},
        }
        for name in ("Ferritin", "Iron and TIBC")
    ]
    assert topics(run(*pending, drafts=(draft_b12(),), hook="order-select")) == []
    assert topics(run(pending[0], drafts=(draft_b12(),), hook="order-select")) == ["iron-studies-after-b12"]


def test_the_verified_b12_code_still_reads_with_a_text_the_patterns_do_not_know() -> None:
    coded = {**CYANO, "text": "Local B-vitamin injection"}
    assert set(codes.build_value_sets(None).medication_classes([coded])) == THERAPY
    unknown = {"coding": [{"system": "http://pharmacy.example.org/formulary", "code": "X9"}]}
    assert set(codes.build_value_sets(None).medication_classes([unknown])) == NONE
