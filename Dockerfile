# Production-like image: gunicorn for the web, the same image runs the worker, beat and collector.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=portal.settings.production
WORKDIR /app

COPY pyproject.toml ./
# A fixed uid and gid: the Helm chart runs the pods as 10001:10001 (runAsNonRoot needs a number).
RUN pip install --no-cache-dir . \
    && groupadd --system --gid 10001 portal \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home portal
COPY . .
# collectstatic needs settings that production would refuse to start without; they are build-time only.
RUN PORTAL_SECRET_KEY=build PORTAL_ALLOWED_HOSTS=build DATABASE_URL=postgres://build/build \
    PORTAL_CREDENTIALS_KEYS=ECeU29ZqdPsixSZ-80aiWQ9wB5XP6aQPx8NI6zX5hOs= CELERY_BROKER_URL=redis://build \
    PORTAL_METRICS_TOKEN=build \
    python manage.py collectstatic --no-input -v0 && chown -R portal /app/var

# Numeric, so the kubelet can check runAsNonRoot against the image itself.
USER 10001:10001
EXPOSE 8000
# No control socket: it would be written under the read-only home, and nothing uses gunicornc.
CMD ["gunicorn", "portal.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-", \
     "--no-control-socket"]
