"""Inference: the worker that runs PyTorch models on complete studies (issue #3)."""

__all__: list[str] = []
