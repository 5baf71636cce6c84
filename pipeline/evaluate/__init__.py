"""Evaluation: metrics, LSE, the evaluate and report stages, run comparison."""
