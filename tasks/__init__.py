"""Celery adapters: `celery -A tasks` finds the app here."""
from tasks.celery import app as celery_app

__all__ = ("celery_app",)
