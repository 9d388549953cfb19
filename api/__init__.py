"""The control plane: apps and tokens, rooms and their status table, quotas, stores (SQLite, Redis), the
WeChat-compatible and REST routes, the CLI, and the composition root (server.py) that starts everything.
May import: everything (ingest, signaling, recorder, relay); handlers stay thin and call the services.
"""
