"""Stages of the web-text cleaning pipeline (see data_prep/clean.py)."""
