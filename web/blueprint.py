"""flask-smorest's Blueprint with a webargs parser that skips the work an empty query
string does not need."""
import flask_smorest
from marshmallow import Schema
from webargs.flaskparser import FlaskParser


class ArgumentsParser(FlaskParser):
    """webargs' Flask parser; a request without a query string gets what its schema loaded
    from no arguments the first time (defaults and None), not a new load each request."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._without_arguments: dict[Schema, dict] = {}

    def parse(self, argmap, req=None, *, location=None, validate=None, **kwargs):
        """Parse as webargs does, or copy the cached load of an empty query string."""
        request = req if req is not None else self.get_default_request()
        if location != "query" or validate is not None or request.query_string:
            return super().parse(argmap, req, location=location, validate=validate, **kwargs)
        try:
            return dict(self._without_arguments[argmap])
        except (KeyError, TypeError):  # TypeError: a dict of fields, which is not cached
            pass
        # A schema that refuses no arguments (a required one) raises here, every time.
        loaded = super().parse(argmap, req, location=location, **kwargs)
        if _constant_without_arguments(argmap):
            self._without_arguments[argmap] = loaded
            return dict(loaded)
        return loaded


def _constant_without_arguments(argmap) -> bool:
    """Whether loading no arguments gives the same answer every time: a schema instance
    whose defaults are values, not callables."""
    return isinstance(argmap, Schema) and not any(
        callable(field.load_default) for field in argmap.fields.values())


class Blueprint(flask_smorest.Blueprint):
    """The API's blueprints: flask-smorest's, with ArgumentsParser."""

    ARGUMENTS_PARSER = ArgumentsParser()
