"""The one exception type of weight loading."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, found, or loaded into the model asked for.

    A `ValueError`, so that callers catching bad-argument errors catch it too. When it is
    raised, no variable of the model has been changed (see `load_weights`).
    """
