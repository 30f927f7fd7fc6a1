"""Temporal orchestration of incidents: deterministic workflow code, the pure
decisions it uses, and the contracts (names and dataclasses) of the activities
that ``gateway`` implements. Imports temporalio and the standard library only.
"""

from workflows.incident import IncidentWorkflow
from workflows.retention import RetentionWorkflow

TASK_QUEUE = "coopgate-incidents"

__all__ = ["TASK_QUEUE", "IncidentWorkflow", "RetentionWorkflow"]
