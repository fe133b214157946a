import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.production")

application = get_wsgi_application()

# What start-up built (models, settings, imported modules) lives as long as the worker: frozen, the
# garbage collector's full passes, every few hundred requests, no longer walk it all, a pause that
# otherwise lands on whichever request triggers it.
gc.freeze()
