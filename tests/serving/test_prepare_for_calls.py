"""What a worker builds before its first call, so that call is not the one that pays for it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cds_service.clinical import codes
from cds_service.clinical.rules import common

# Run in a fresh interpreter: in this one, earlier tests have long since built all of it on first use.
_PROBE = textwrap.dedent(
    """
    import json, sys
    from cds_service.app import create_app
    from cds_service.clinical.rules import common
    from cds_service.config import Settings
    from cds_service.feedback import schema as feedback_schema
    from cds_service.protocol import schemas
    from cds_service.protocol.request import HOOKS
    from cds_service import observability

    folder = sys.argv[1]
    app = create_app(Settings(auth="off", feedback_db=folder + "/f.sqlite3", state_db=folder + "/s.sqlite3"))
    misses = schemas.validator.cache_info().misses
    for name in ["hook-request", *(f"context-{hook}" for hook in HOOKS)]:
        schemas.validator(name)
    print(json.dumps({
        "request_validators_built": schemas.validator.cache_info().misses == misses,
        "feedback_validator_built": feedback_schema._validator.cache_info().currsize == 1,
        "metrics_built": observability._metrics is not None,
        "lab_order_shapes": sorted(common._VALIDATED_LAB_ORDER_SHAPES),
        "r4b_modules": sorted(m for m in sys.modules if m.startswith("fhir.resources.R4B.")),
    }))
    app.extensions["cds"]["recorder"].close()
    app.extensions["cds"]["feedback"].close()
    """
)


def test_a_new_app_has_built_its_validators_metrics_and_proposal_models(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    built = json.loads(done.stdout.strip().splitlines()[-1])
    assert built["request_validators_built"] is True
    assert built["feedback_validator_built"] is True
    assert built["metrics_built"] is True
    assert built["lab_order_shapes"] == sorted(
        [a, timed] for a in codes.ORDER_CODES for timed in (False, True)
    )
    # The field types of a stop update's MedicationRequest/Statement, imported on first validation.
    assert {"fhir.resources.R4B.dosage", "fhir.resources.R4B.timing", "fhir.resources.R4B.period"} <= set(
        built["r4b_modules"]
    )


def test_a_lab_order_that_is_not_valid_r4b_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a proposed order surfaces when the worker boots, not in a clinician's call."""
    monkeypatch.setitem(codes.ORDER_CODES, "b12", "two  spaces")  # a FHIR code has single spaces only
    monkeypatch.setattr(common, "_VALIDATED_LAB_ORDER_SHAPES", set())
    common.prepare_proposals.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="not valid R4B"):
            common.prepare_proposals()
    finally:
        common.prepare_proposals.cache_clear()
