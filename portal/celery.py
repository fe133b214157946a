import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.base")

app = Celery("portal")
# All Celery configuration, the beat schedule included, lives in Django settings under CELERY_*.
app.config_from_object("django.conf:settings", namespace="CELERY")
# Each app's tasks.py, and those of the utilisation read side, which lives inside the pools app.
app.autodiscover_tasks()
app.autodiscover_tasks(["pools.utilisation"])
