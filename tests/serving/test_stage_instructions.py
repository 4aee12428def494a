"""The stage-by-stage instruction counter must cut the real call, not a look-alike.

`benchmarks/count_stage_instructions.py` rebuilds the hook handler's pipeline from the same public
functions so that it can stop after each step. If the handler moved on (another step, another order, a
changed signature), the counts would describe something the service no longer does; the stages are
therefore checked against the handler and the Flask app here. The counting itself needs valgrind and is
the benchmark's business.
"""

from __future__ import annotations

from flask import Flask

from benchmarks.count_stage_instructions import STAGE_NAMES, build_stages, request_body
from cds_service.protocol.prefetch import resources_of


def _topics(answer: dict) -> list[str]:
    return [card["source"]["topic"]["code"] for card in answer["cards"]]


def test_every_stage_is_built_and_the_last_ones_answer_what_the_service_answers(app: Flask) -> None:
    body = request_body()
    stages = build_stages(app, body)
    assert tuple(stages) == STAGE_NAMES

    served = stages["flask"]()
    assert _topics(served), "the benchmark request should raise a card for the comparison to mean anything"
    assert _topics(stages["handler"]()) == _topics(served)
    rendered = stages["cards"]()
    assert _topics(rendered) == _topics(served)
    assert [card["summary"] for card in rendered["cards"]] == [card["summary"] for card in served["cards"]]


def test_the_prefetch_stage_hands_every_prefetched_resource_to_the_record(app: Flask) -> None:
    stages = build_stages(app, request_body())
    parsed = stages["parse"]()
    request, resources = stages["prefetch"]()
    sent = [resource for value in parsed["prefetch"].values() for resource in resources_of(value)]
    assert request.hook_instance == parsed["hookInstance"]
    assert len(resources) == len(sent) > 100
    record = stages["record"]()
    assert sum(len(results) for results in record.results.values()) == sum(
        1 for resource in sent if resource["resourceType"] == "Observation"
    )
