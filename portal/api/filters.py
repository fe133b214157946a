"""Filter types shared by the apps' filtersets."""

from datetime import datetime
from typing import Any

import django_filters
from django import forms
from django.db.models import QuerySet
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.request import Request

from portal.api.serializers import storable_datetime

MAX_ID = 2**63 - 1


class IdFilter(django_filters.NumberFilter):
    """An object id: a whole number in the database's range, so bad input is a 400, never a query error."""

    field_class = forms.IntegerField

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


class _StorableIsoDateTimeField(IsoDateTimeField):
    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return storable_datetime(parsed)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None


class DateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 datetime within what the database can compare against (see storable_datetime)."""

    field_class = _StorableIsoDateTimeField


# Query parameters no filterset reads: paging and ordering are other backends' and the paginator's.
NOT_FILTERS = frozenset({"page", "page_size", "ordering"})


class FilterBackend(DjangoFilterBackend):
    """DjangoFilterBackend, except that a request naming no filter parameter is not filtered at all.

    Building a filterset builds and validates its form, deep-copying every filter and form field, on
    every request; with no filter parameter that work cannot change the rows (the portal's filtersets
    have no required filter and no default value), so automation polling the first page skips it.
    """

    def filter_queryset(self, request: Request, queryset: QuerySet, view: Any) -> QuerySet:
        if not set(request.query_params) - NOT_FILTERS:
            return queryset
        return super().filter_queryset(request, queryset, view)
