"""Samples a team copies and adapts: a mini-program (``miniprogram/``) and its back end (``backend/``).
Not part of the minilive distribution; tests import them from the repository."""
