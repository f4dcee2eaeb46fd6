"""Errors a user can fix: they carry a precise one-line reason for SageMaker's failure file."""


class UserError(Exception):
    """Bad input, data or configuration. The message names the channel, file or hyperparameter."""
