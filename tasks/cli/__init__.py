"""celery sub-commands for operators (the `celery.commands` entry points in setup.cfg)."""
