"""Card feedback (CDS Hooks 2.0): validation, the durable store, the issued-card record, the report."""

from cds_service.feedback.issued import IssuedCardRecorder
from cds_service.feedback.schema import (
    FeedbackError,
    FeedbackItem,
    OverrideReason,
    parse_feedback,
    prepare_feedback_validator,
)
from cds_service.feedback.store import FeedbackStore, StoreUnavailable

__all__ = [
    "FeedbackError",
    "FeedbackItem",
    "FeedbackStore",
    "IssuedCardRecorder",
    "OverrideReason",
    "StoreUnavailable",
    "parse_feedback",
    "prepare_feedback_validator",
]
