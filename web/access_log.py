"""gunicorn's logger for the API: the same access line, built from fewer atoms.

gunicorn's Logger.atoms turns every request header, response header and environ variable
into an atom (`{name}i`, `{name}o`, `{name}e`), about forty each request, and SafeAtoms
then escapes each of them; the default access log format names none. When the format
names none, AccessLogger hands gunicorn's own atoms() only the environ variables it reads
by name, and no headers, so the line is the same and its atoms are a third as many.

It uses gunicorn's logger extension point (`logger_class`) and Logger.atoms(resp, req,
environ, request_time) (checked with gunicorn 27.0.1;
tests/web/test_access_log.py compares its lines with gunicorn's Logger's).
"""
from types import SimpleNamespace

from gunicorn import glogging

# The environ variables gunicorn's Logger.atoms reads by name (_get_user: the Authorization).
ATOM_ENVIRON = ("REMOTE_ADDR", "HTTP_AUTHORIZATION", "REQUEST_METHOD", "RAW_URI",
                "SERVER_PROTOCOL", "PATH_INFO", "QUERY_STRING", "HTTP_REFERER",
                "HTTP_USER_AGENT")


class AccessLogger(glogging.Logger):
    """gunicorn's Logger; header and environ atoms only when the access log format names one."""

    def atoms(self, resp, req, environ, request_time):
        """gunicorn's atoms: all of them if the format names `{...}` atoms, else the rest."""
        if "{" in self.cfg.access_log_format:
            return super().atoms(resp, req, environ, request_time)
        named = {key: environ[key] for key in ATOM_ENVIRON if key in environ}
        answer = SimpleNamespace(status=resp.status, sent=getattr(resp, "sent", None),
                                 headers=())
        return super().atoms(answer, (), named, request_time)
