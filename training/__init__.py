"""Training: fits, evaluates and packages the models the node runs (issue #4)."""

__all__: list[str] = []
