"""Evaluation: retrieval metrics on BEIR-layout data and answer-level checks on SQuAD."""
