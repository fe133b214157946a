from typing import TYPE_CHECKING, Any

from django.core.paginator import InvalidPage, Paginator
from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

from portal.statements import CompiledRows, user_key

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
    """The key of a list read compiled once (portal.statements.CompiledRows): the endpoint, the caller
    and their scope, and every query parameter but the page, which the paginator's slice adds."""
    paging = {PagePagination.page_query_param, PagePagination.page_size_query_param}
    query = tuple(sorted((k, tuple(v)) for k, v in request.query_params.lists() if k not in paging))
    return (type(view).__qualname__, getattr(view, "action", None), user_key(request.user), query)
