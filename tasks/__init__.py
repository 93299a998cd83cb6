"""Celery tasks: thin wrappers that load ids and call services. Queues live in queues.py."""
