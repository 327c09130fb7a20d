"""Celery adapters: `celery -A tasks` finds the app, built from the environment, here."""
from app.settings import from_env_or_exit
from tasks.celery import create_celery

app = create_celery(from_env_or_exit())

__all__ = ("app",)
