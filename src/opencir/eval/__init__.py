"""Evaluation: metric core, benchmark adapters, submissions, reports."""
