"""What the views take from the app they run in."""
from typing import TypeVar

from flask import current_app
from flask_smorest import abort

from app.store import FilesStore, Store

T = TypeVar("T")


def store() -> Store:
    """The app's Redis gateway."""
    return current_app.extensions["store"]


def files_store() -> FilesStore:
    """The app's gateway to the batch files path's Redis keys (KPIs, executions)."""
    return current_app.extensions["files_store"]


def found(value: T | None, message: str) -> T:
    """The value, or a JSON 404 with the message when there is none."""
    if value is None:
        abort(404, message=message)
    return value


def no_orders_of(user_id: str) -> str:
    """The 404 message for a user without a counted order."""
    return f"No orders counted for user {user_id!r}."
