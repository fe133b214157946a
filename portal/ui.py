"""Plumbing shared by the browser views of every app: htmx-aware login, refusals and service errors.

Views stay thin: they call a selector or a service and hand its errors to these helpers, so a
refusal reads the same whether it comes back into an htmx partial or a full page.
"""

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render, resolve_url
from django_htmx.http import HttpResponseClientRedirect

View = Callable[..., HttpResponse]

READ_ONLY_REFUSAL = "Auditors can read everything but change nothing."


def login_redirect(request: HttpRequest) -> HttpResponse:
    if request.htmx:
        # A partial request after the session expired: a 302 would be followed by the browser and the
        # login form swapped into a table cell. Send the whole page to the login form instead, and
        # back to that page (not to the partial's URL) after signing in.
        back_to = request.htmx.current_url_abs_path or request.get_full_path()
        response = HttpResponseClientRedirect(
            f"{resolve_url(settings.LOGIN_URL)}?{urlencode({'next': back_to})}"
        )
        response.status_code = 401
        return response
    return redirect_to_login(request.get_full_path())


def login_required(view: View) -> View:
    """Like Django's, but an htmx request from an expired session redirects the page, not the partial."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return login_redirect(request)
        return view(request, *args, **kwargs)

    return wrapped


def refusal(request: HttpRequest, message: str, *, status: int = 403) -> HttpResponse:
    """A refusal that explains itself: inline in the htmx target, or as a page of its own."""
    template = "partials/refusal.html" if request.htmx else "refusal.html"
    return render(request, template, {"message": message}, status=status)


def error_text(error: ValidationError | PermissionDenied) -> str:
    if isinstance(error, ValidationError):
        return " ".join(error.messages)
    return str(error) or "You may not do this."


def writer_required(view: View) -> View:
    """Signed in and allowed to change things: auditors read everything and change nothing."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.user.is_read_only:
            return refusal(request, READ_ONLY_REFUSAL)
        return view(request, *args, **kwargs)

    return wrapped


def form_add_service_error(form: forms.Form, error: ValidationError | PermissionDenied) -> None:
    """Put a service's error on the form fields it names; anything else becomes a form-wide error."""
    if isinstance(error, ValidationError) and hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error_text(error))


def focus_first_error(form: forms.Form) -> None:
    """Move keyboard focus to the first field in error (htmx honours autofocus in swapped content)."""
    for name in form.fields:
        if name in form.errors:
            form.fields[name].widget.attrs["autofocus"] = True
            return


class PortalForm(forms.Form):
    """Labels without Django's trailing colon: the field group layout already separates them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
