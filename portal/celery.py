import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.base")

app = Celery("portal")
# All Celery configuration, the beat schedule included, lives in Django settings under CELERY_*.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
