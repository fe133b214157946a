from django.db.models import prefetch_related_objects
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from portal.api.serializers import MeSerializer


class MeView(APIView):
    @extend_schema(
        operation_id="me_retrieve",
        summary="Who am I",
        description="The calling user, their team memberships, and the token used for the call.",
        responses=MeSerializer,
        tags=["me"],
    )
    def get(self, request: Request) -> Response:
        prefetch_related_objects([request.user], "memberships__team")
        return Response(MeSerializer(request.user, context={"request": request}).data)


@csrf_exempt
def api_not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Unknown paths under /api/ answer in the API's error format, not with the HTML 404 page."""
    hint = "" if request.path.endswith("/") else " API paths end with a slash."
    return JsonResponse(
        {"code": "not_found", "message": f"No API endpoint at {request.path}.{hint}", "fields": {}},
        status=404,
    )
