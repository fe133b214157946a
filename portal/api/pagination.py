from typing import TYPE_CHECKING, Any

from django.core.paginator import InvalidPage, Paginator
from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.filters import OrderingFilter
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

from portal.statements import CompiledRows, user_key

ORDERING_PARAM = OrderingFilter.ordering_param

if TYPE_CHECKING:
    # Imported for type hints only: rest_framework.views imports the permission classes.
    from rest_framework.views import APIView


class PagePagination(PageNumberPagination):
    """Numbered pages of `page_size` rows (default 50, at most 200) with the total `count`."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def paginate_queryset(
        self, queryset: "QuerySet | CompiledRows", request: Request, view: "APIView | None" = None
    ) -> list:
        self.request = request
        paginator = Paginator(queryset, self.get_page_size(request))
        page_number = self.get_page_number(request, paginator)
        try:
            self.page = paginator.page(page_number)
        except InvalidPage as exc:
            # DRF answers 404 here; a page number that does not exist is bad input, like any other.
            raise ValidationError({self.page_query_param: [f"Invalid page {page_number!r}: {exc}."]}) from exc
        return list(self.page)


def compiled_read_key(view: "APIView", request: Request) -> tuple[Any, ...]:
    """The key of a list read compiled once (portal.statements.CompiledRows): the endpoint (its
    viewset, action and URL arguments), the caller and their scope, and the query parameters its
    filterset and ordering read. Paging is not part of it: the paginator's slice adds it. Parameters
    nothing reads change no SQL, so they are left out: a cache-buster makes no new statement."""
    read = {*getattr(getattr(view, "filterset_class", None), "base_filters", ()), ORDERING_PARAM}
    query = tuple(sorted((k, tuple(v)) for k, v in request.query_params.lists() if k in read))
    endpoint = (type(view).__module__, type(view).__qualname__, getattr(view, "action", None))
    return (*endpoint, tuple(sorted(view.kwargs.items())), user_key(request.user), query)
