"""The gate: the one pipeline from a tool call to a target (classify, decide, confirm, intent,
execute, outcome, undo), with policy, human approvals, sagas and gameday."""
