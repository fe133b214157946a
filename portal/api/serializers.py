"""Serializers shared by every app's API: the error shape, user references, the caller and tokens."""

from datetime import UTC, datetime
from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from portal.models import ApiToken, User


class ErrorSerializer(serializers.Serializer):
    """The one error shape of the API."""

    code = serializers.CharField(
        help_text="Machine-readable, e.g. invalid, not_found, token_expired, conflict"
    )
    message = serializers.CharField(help_text="What went wrong, for a human")

    def get_fields(self) -> dict[str, serializers.Field]:
        # `fields` is a Serializer attribute, so it cannot be declared in the class body.
        fields = super().get_fields()
        fields["fields"] = serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()),
            help_text="Messages per invalid field (dotted paths for nested ones); empty if none",
        )
        return fields


def storable_datetime(value: datetime) -> datetime:
    """`value` in UTC, if the database can store it and read it back; ValueError saying why not.

    PostgreSQL refuses UTC offsets beyond 15:59 that Python accepts, and a value stored near year
    9999 with an offset cannot be read back into a Python datetime: both would be 500s on bad input.
    """
    try:
        utc = value.astimezone(UTC) if timezone.is_aware(value) else value.replace(tzinfo=UTC)
    except OverflowError:
        utc = None
    if utc is None or not 2000 <= utc.year <= 9000:
        raise ValueError("Give a date between the years 2000 and 9000.")
    return utc


class BoundedDateTimeField(serializers.DateTimeField):
    """A datetime the database can store and read back (see storable_datetime), in UTC."""

    def to_internal_value(self, value: Any) -> datetime:
        try:
            return storable_datetime(super().to_internal_value(value))
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None


class MembershipRefSerializer(serializers.Serializer):
    team = serializers.CharField(source="team.slug")
    role = serializers.CharField()


class ApiTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "read_only",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
        ]


class MeSerializer(serializers.ModelSerializer):
    memberships = MembershipRefSerializer(many=True, read_only=True)
    token = serializers.SerializerMethodField(
        help_text="The token this call used; null for a browser session"
    )

    class Meta:
        model = User
        fields = ["id", "username", "email", "is_platform_admin", "is_auditor", "memberships", "token"]

    @extend_schema_field(ApiTokenSerializer(allow_null=True))
    def get_token(self, user: User) -> dict[str, Any] | None:
        token = self.context["request"].auth
        return ApiTokenSerializer(token).data if isinstance(token, ApiToken) else None
