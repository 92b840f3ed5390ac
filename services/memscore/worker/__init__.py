"""Celery adapter: tasks load inputs from store/, call engine/, write outputs to store/."""
