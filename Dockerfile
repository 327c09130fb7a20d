# One image for every app process: API (default CMD), Celery workers, Flower, queue init.
FROM python:3.11-slim

# gunicorn binds to loopback unless API_BIND says otherwise; in a container it must
# listen on all interfaces to be reachable through the published port.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    API_BIND=0.0.0.0:8000

# Run from the project root: gunicorn's -c path is relative, and celery -A finds
# celeryconfig.py (a top-level module, not in the installed packages) from the cwd.
WORKDIR /app
COPY . .

# No apt packages: pycurl's manylinux wheels (x86_64 and aarch64) bundle libcurl and
# OpenSSL. --only-binary makes a missing wheel fail the build instead of falling back
# to a source build that would need a compiler and libcurl headers.
RUN pip install --only-binary=pycurl -c requirements/constraints.txt . \
    && useradd --create-home --uid 10001 app

# Non-root; the source stays owned by root, so the app cannot modify its own code.
# The home directory is where gunicorn puts its control socket (~/.gunicorn).
USER app

EXPOSE 8000 5555
CMD ["gunicorn", "-c", "web/gunicorn.conf.py", "web:create_app()"]
