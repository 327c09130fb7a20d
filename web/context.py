"""What the views take from the app they run in."""
from flask import current_app

from app.store import Store


def store() -> Store:
    """The app's Redis gateway."""
    return current_app.extensions["store"]
