"""The kernel every part of cibot may import: errors, settings, logging and the job contract.

It imports nothing else from the project, so the layers above it (policies, workers, the
web edge and CLI) can each depend on it without depending on one another.
"""
