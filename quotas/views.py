from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from quotas import selectors
from quotas.models import CapacityRequest


@login_required
def request_detail(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        req = selectors.capacity_request_get(user=request.user, pk=pk)
    except CapacityRequest.DoesNotExist:
        raise Http404("No such request") from None
    return render(request, "quotas/request_detail.html", {"req": req, "decisions": req.decisions.all()})
