"""The user's own API tokens: issue one (shown once), see them, revoke them."""

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from portal.api import selectors, services
from portal.models import ApiToken


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What will use it, e.g. 'CI pipeline'")
    expires_in_days = forms.IntegerField(
        label="Valid for (days)",
        min_value=1,
        max_value=settings.PORTAL_API_TOKEN_MAX_DAYS,
        initial=settings.PORTAL_API_TOKEN_DEFAULT_DAYS,
    )
    read_only = forms.BooleanField(required=False, help_text="Can read, cannot request or approve anything")


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    issued = None
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            issued = services.api_token_issue(user=request.user, **form.cleaned_data)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            form = TokenForm()
    return render(
        request,
        "portal/tokens.html",
        {
            "form": form,
            "issued": issued,
            "tokens": selectors.api_token_list(user=request.user),
            "now": timezone.now(),
        },
    )


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        token = selectors.api_token_get(user=request.user, pk=pk)
    except ApiToken.DoesNotExist:
        raise Http404("No such token") from None
    services.api_token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token {token} revoked.")
    return redirect("tokens")
