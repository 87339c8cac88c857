"""Evaluation beyond the loss: multiple-choice task metrics (tasks.py)."""
