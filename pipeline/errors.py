"""Errors a user can act on. The CLI prints their message and exits with their code."""


class PipelineError(Exception):
    """A problem with the user's input (files, layout, credentials). Exit code 1."""

    exit_code = 1


class ConfigError(PipelineError):
    """params.yaml is missing, malformed or invalid. Exit code 2, nothing written."""

    exit_code = 2
