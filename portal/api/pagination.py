from typing import TYPE_CHECKING

from django.core.paginator import InvalidPage, Paginator
from django.db.models import QuerySet
from django.utils.functional import cached_property
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request

if TYPE_CHECKING:
    # Imported for type hints only: rest_framework.views imports the permission classes.
    from rest_framework.views import APIView


class _Paginator(Paginator):
    def __init__(self, object_list: QuerySet, per_page: int, counted: QuerySet | None) -> None:
        super().__init__(object_list, per_page)
        self._counted = counted

    @cached_property
    def count(self) -> int:
        return super().count if self._counted is None else self._counted.count()


class PagePagination(PageNumberPagination):
    """Numbered pages of `page_size` rows (default 50, at most 200) with the total `count`."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def paginate_queryset(
        self,
        queryset: QuerySet,
        request: Request,
        view: "APIView | None" = None,
        *,
        counted: QuerySet | None = None,
    ) -> list:
        """`counted`: the same rows without what only the page needs (a values() page joins the names of
        what each row points to, and count() would join them too, for every row it counts)."""
        self.request = request
        paginator = _Paginator(queryset, self.get_page_size(request), counted)
        page_number = self.get_page_number(request, paginator)
        try:
            self.page = paginator.page(page_number)
        except InvalidPage as exc:
            # DRF answers 404 here; a page number that does not exist is bad input, like any other.
            raise ValidationError({self.page_query_param: [f"Invalid page {page_number!r}: {exc}."]}) from exc
        return list(self.page)
