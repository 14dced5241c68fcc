"""Cascades: call a cheap model, score its answer, escalate to a stronger model when the score is low."""
