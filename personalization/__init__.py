"""Batch personalization engine for an app store."""

__version__ = "0.1.0"
