"""Personalization models, evaluation, training, registry and batch scoring."""
