"""Teams, capacity requests, grants, serving deployments, utilisation and the audit log.

Viewsets stay thin: reads go through quotas.selectors (scoped to the caller, so another team's
objects are simply absent: 404, never 403), writes through quotas.services, whose ValidationError and
PermissionDenied the API's exception handler turns into 400/409 and 403.
"""

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import Serializer

from pools.api.filtersets import NodePoolFilterSet
from pools.models import NodePool
from pools.selectors import node_pool_list
from portal.api.exceptions import error_parts
from portal.api.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent
from portal.api.pagination import compiled_read_key
from portal.api.permissions import SeesEverything
from portal.models import AuditEvent
from portal.statements import CompiledRows
from quotas import selectors, services
from quotas.access import grant_access_get
from quotas.api import filtersets
from quotas.api import serializers as s
from quotas.models import CapacityRequest, Grant, ServingDeployment, Team

ID = r"[0-9]{1,18}"


def _validated(serializer_class: type[Serializer], request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data, context={"request": request})
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


@extend_schema_view(
    list=extend_schema(summary="List teams", description="Your teams (every team for admins and auditors)."),
    retrieve=extend_schema(summary="Get a team"),
)
class TeamViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = s.TeamSerializer
    filterset_class = filtersets.TeamFilterSet
    ordering_fields = ["slug", "name"]
    ordering = ["slug", "id"]
    lookup_value_regex = ID

    def get_queryset(self) -> QuerySet[Team]:
        if getattr(self, "swagger_fake_view", False):
            return Team.objects.none()
        return selectors.teams_visible_to(user=self.request.user).prefetch_related("memberships__user")


@extend_schema_view(
    list=extend_schema(
        summary="List capacity requests",
        description="Requests of your teams (all of them for admins and auditors), newest first.",
    ),
    retrieve=extend_schema(summary="Get a capacity request"),
)
class CapacityRequestViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = s.CapacityRequestSerializer
    filterset_class = filtersets.CapacityRequestFilterSet
    ordering_fields = ["created_at", "updated_at", "starts_at", "ends_at", "gpus", "state"]
    ordering = ["-created_at", "-id"]
    lookup_value_regex = ID

    def get_queryset(self) -> QuerySet[CapacityRequest]:
        if getattr(self, "swagger_fake_view", False):
            return CapacityRequest.objects.none()
        user = self.request.user
        qs = (
            selectors.approval_inbox(user=user)
            if self.action == "inbox"
            else selectors.capacity_request_list(user=user)
        )
        return qs.select_related("grant").prefetch_related("decisions__approver")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        # The hottest read (automation polls it): the count, the page as plain values and its
        # decisions, each compiled once per caller, scope and query string (portal.statements), and
        # rendered by capacity_request_rows (equal to the serializer's output).
        def build() -> tuple[QuerySet[CapacityRequest], QuerySet[CapacityRequest]]:
            queryset = self.filter_queryset(self.get_queryset())
            return selectors.capacity_request_values(queryset), queryset

        source = CompiledRows(compiled_read_key(self, request), build)
        rows = self.paginator.paginate_queryset(source, request, view=self)
        decisions = selectors.capacity_request_decision_values(request_ids=[r["pk"] for r in rows])
        return self.get_paginated_response(s.capacity_request_rows(rows, decisions))

    def _answer(self, req: CapacityRequest, code: int = status.HTTP_200_OK) -> Response:
        # Read back as the list reads (two queries): what a create or decision answers is its row.
        row = selectors.capacity_request_row(user=self.request.user, pk=req.pk)
        if row is None:  # no longer visible to the actor (e.g. removed from the team in between)
            raise NotFound("No such capacity request.")
        decisions = selectors.capacity_request_decision_values(request_ids=[req.pk])
        return Response(s.capacity_request_rows([row], decisions)[0], status=code)

    @extend_schema(
        summary="Request capacity",
        description="Create a capacity request for one of your teams and submit it for approval (unless "
        "`submit` is false). The portal picks the pool; requests within the auto-approval rule are approved "
        "at once. Capacity, memory-fit and validity rules answer 400 with the field at fault.",
        request=s.CapacityRequestCreateSerializer,
        responses={201: s.CapacityRequestSerializer},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @idempotent
    def create(self, request: Request) -> Response:
        data = _validated(s.CapacityRequestCreateSerializer, request)
        req = services.capacity_request_create(requester=request.user, **data)
        return self._answer(req, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Requests waiting for my decision",
        description="Pending requests you may approve or reject: as a team lead, or as a platform admin. "
        "Never your own.",
        responses=s.CapacityRequestSerializer(many=True),
    )
    @action(detail=False, methods=["get"])
    def inbox(self, request: Request) -> Response:
        return self.list(request)

    @extend_schema(
        summary="Submit a draft",
        request=None,
        responses=s.CapacityRequestSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def submit(self, request: Request, pk: str) -> Response:
        req = services.capacity_request_submit(capacity_request=self.get_object(), actor=request.user)
        return self._answer(req)

    @extend_schema(
        summary="Approve",
        description="Approve at the stage the request is in: team lead, then platform admin. Nobody "
        "approves their own request (403). The final approval re-checks the pool's capacity (409 when it "
        "no longer fits).",
        request=s.DecisionInputSerializer,
        responses=s.CapacityRequestSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def approve(self, request: Request, pk: str) -> Response:
        data = _validated(s.DecisionInputSerializer, request)
        req = services.capacity_request_approve(
            capacity_request=self.get_object(), actor=request.user, comment=data["comment"]
        )
        return self._answer(req)

    @extend_schema(
        summary="Approve or reject many",
        description="Decide up to 500 requests at once with one comment (required to reject), by the "
        "rules of single decisions: the stage each request is in, never your own, two people for two "
        "stages, and for final approvals the pre-flight (once per pool) and the capacity rules under each "
        "pool's row lock. Answers 200 with one result per request, in the order given: its outcome, the "
        "status a single decision would have answered, and on refusal the error in the API's format. A "
        "request is decided whole or not at all. With an Idempotency-Key the whole batch commits with its "
        "answer, and a retry gets the same results.",
        request=s.BulkDecisionInputSerializer,
        responses=s.BulkDecisionSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=False, methods=["post"])
    @idempotent
    def decide(self, request: Request) -> Response:
        data = _validated(s.BulkDecisionInputSerializer, request)
        ids: list[int] = data["requests"]
        visible = selectors.capacity_request_list(user=request.user).filter(pk__in=ids)
        seen = set(visible.values_list("pk", flat=True))
        decided = (
            services.capacity_requests_decide(
                actor=request.user,
                request_ids=[pk for pk in ids if pk in seen],
                decision=data["decision"],
                comment=data["comment"],
            )
            if seen
            else []
        )
        by_id = {r.request_id: r for r in decided}
        states = dict(visible.values_list("pk", "state"))
        items = []
        for pk in ids:
            result = by_id.get(pk) or services.DecisionResult(pk, "refused", CapacityRequest.DoesNotExist())
            status_code, error = 200, None
            if result.error is not None:
                status_code, error = error_parts(result.error, {"kwargs": {"pk": pk}}) or (500, None)
            items.append(
                {
                    "id": pk,
                    "status": status_code,
                    "outcome": result.outcome,
                    "state": states.get(pk),
                    "grant": result.grant_id,
                    "error": error,
                }
            )
        counts = {outcome: 0 for outcome in ("approved", "lead_approved", "rejected", "refused")}
        for item in items:
            counts[item["outcome"]] += 1
        return Response({"decision": data["decision"], "counts": counts, "results": items})

    @extend_schema(
        summary="Reject",
        description="Reject with a comment the requester reads. Same rules as approving.",
        request=s.RejectInputSerializer,
        responses=s.CapacityRequestSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def reject(self, request: Request, pk: str) -> Response:
        data = _validated(s.RejectInputSerializer, request)
        req = services.capacity_request_reject(
            capacity_request=self.get_object(), actor=request.user, comment=data["comment"]
        )
        return self._answer(req)

    @extend_schema(
        summary="Cancel",
        description="Cancel a draft or pending request: the requester or a team lead. "
        "An approved request is revoked instead (grants).",
        request=None,
        responses=s.CapacityRequestSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def cancel(self, request: Request, pk: str) -> Response:
        req = services.capacity_request_cancel(capacity_request=self.get_object(), actor=request.user)
        return self._answer(req)


@extend_schema_view(
    list=extend_schema(
        summary="List grants",
        description="Grants of your teams (all for admins and auditors) with the reconciler's conditions.",
    ),
    retrieve=extend_schema(summary="Get a grant"),
)
class GrantViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = s.GrantSerializer
    filterset_class = filtersets.GrantFilterSet
    ordering_fields = ["created_at", "starts_at", "ends_at", "gpus", "namespace"]
    ordering = ["-created_at", "-id"]
    lookup_value_regex = ID

    def get_queryset(self) -> QuerySet[Grant]:
        if getattr(self, "swagger_fake_view", False):
            return Grant.objects.none()
        return selectors.grant_list(user=self.request.user)

    def _answer(self, grant: Grant) -> Response:
        return Response(self.get_serializer(self.get_queryset().get(pk=grant.pk)).data)

    @extend_schema(
        summary="Revoke a grant",
        description="Platform admins only: ends the grant now; the reconciler scales the cluster side down.",
        request=s.RevokeInputSerializer,
        responses=s.GrantSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def revoke(self, request: Request, pk: str) -> Response:
        data = _validated(s.RevokeInputSerializer, request)
        grant = services.grant_revoke(grant=self.get_object(), actor=request.user, reason=data["reason"])
        return self._answer(grant)

    @extend_schema(
        summary="Shrink a grant",
        description="Platform admins only: lowers a running grant's GPUs (at least 1, fewer than now, and "
        "no fewer than its live serving deployments use); the reconciler lowers the quota and the per-pod "
        "limit.",
        request=s.ShrinkInputSerializer,
        responses=s.GrantSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def shrink(self, request: Request, pk: str) -> Response:
        data = _validated(s.ShrinkInputSerializer, request)
        grant = services.grant_shrink(grant=self.get_object(), actor=request.user, gpus=data["gpus"])
        return self._answer(grant)

    @extend_schema(
        summary="A queued grant's queue",
        description="For grants whose `admission` is kueue: its ClusterQueue's GPUs (nominal, in use, "
        "borrowed from and lent to the pool's cohort) and its admitted and pending Workloads, each pending "
        "one with its position in the queue, how long it has waited and an estimated start, as the "
        "collector last read them from Kueue (docs/queueing.md says how they are computed). 404 for a "
        "grant that does not queue or whose queue the collector has not seen yet.",
        responses=s.GrantQueueSerializer,
    )
    @action(detail=True, methods=["get"])
    def queue(self, request: Request, pk: str) -> Response:
        grant = self.get_object()
        found = selectors.grant_queue_get(user=request.user, grant=grant) if grant.queued else None
        if found is None:
            raise NotFound(
                f"Grant {grant.namespace} does not queue through Kueue."
                if not grant.queued
                else f"The collector has not reported on the queue of grant {grant.namespace} yet."
            )
        health = selectors.kueue_health(cluster_id=grant.pool.cluster_id, now=timezone.now())
        return Response(s.GrantQueueSerializer(found, context={"kueue": health}).data)

    @extend_schema(
        summary="Delete an ended grant's namespace",
        description="Platform admins only, and only once the grant is revoked or expired: the reconciler "
        "deletes the namespace and everything in it. Ending a grant keeps the namespace otherwise.",
        request=None,
        responses=s.GrantSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"], url_path="delete-namespace")
    @idempotent
    def delete_namespace(self, request: Request, pk: str) -> Response:
        grant = services.grant_namespace_delete(grant=self.get_object(), actor=request.user)
        return self._answer(grant)

    @extend_schema(
        summary="Workloads of the grant's namespace",
        description="Why isn't it running? The Deployments, StatefulSets, Jobs and bare pods of the grant's "
        "namespace with their GPU requests and state, and for each one not (fully) running the cluster's own "
        "reasons, grouped and counted: creates refused by the contract or the quota, unschedulable pods with "
        "the scheduler's message, pods waiting for a node, image pull failures, crash loops. Read from what "
        "the collector's watches last saw (`freshness`), never from the cluster during the call.",
        responses=s.GrantWorkloadsSerializer,
    )
    @action(detail=True, methods=["get"])
    def workloads(self, request: Request, pk: str) -> Response:
        found = selectors.grant_workloads_get(user=request.user, grant=self.get_object(), now=timezone.now())
        return Response(s.GrantWorkloadsSerializer(found).data)

    @extend_schema(
        summary="How to reach the grant's namespace",
        description="The cluster's API endpoint, the namespace, the group its RoleBinding binds, a "
        "kubeconfig without any secret (you sign in with your own cluster identity) and an example manifest "
        "built like the portal's serving deployments.",
        responses=s.GrantAccessSerializer,
    )
    @action(detail=True, methods=["get"])
    def access(self, request: Request, pk: str) -> Response:
        return Response(s.GrantAccessSerializer(grant_access_get(grant=self.get_object())).data)


@extend_schema_view(
    list=extend_schema(
        summary="List serving deployments", description="Model servers in your teams' grants."
    ),
    retrieve=extend_schema(summary="Get a serving deployment"),
)
class ServingDeploymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = s.ServingDeploymentSerializer
    filterset_class = filtersets.ServingDeploymentFilterSet
    ordering_fields = ["created_at", "name", "replicas"]
    ordering = ["-created_at", "-id"]
    lookup_value_regex = ID

    def get_queryset(self) -> QuerySet[ServingDeployment]:
        if getattr(self, "swagger_fake_view", False):
            return ServingDeployment.objects.none()
        return selectors.serving_deployment_list(user=self.request.user).select_related("created_by")

    def _answer(self, deployment: ServingDeployment, code: int = status.HTTP_200_OK) -> Response:
        return Response(self.get_serializer(self.get_queryset().get(pk=deployment.pk)).data, status=code)

    @extend_schema(
        summary="Deploy a model server",
        description="Run a model server in a grant's namespace. The portal adds the scheduling contract "
        "(pool selector, tolerations, GPU limits, priority class, zone spread) and the reconciler applies "
        "it; follow `conditions` and `ready_replicas`. Replicas x GPUs per replica must fit the grant.",
        request=s.ServingDeploymentCreateSerializer,
        responses={201: s.ServingDeploymentSerializer},
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @idempotent
    def create(self, request: Request) -> Response:
        data = _validated(s.ServingDeploymentCreateSerializer, request)
        deployment = services.serving_deployment_create(actor=request.user, **data)
        return self._answer(deployment, status.HTTP_201_CREATED)

    @extend_schema(
        summary="Scale a serving deployment",
        request=s.ScaleInputSerializer,
        responses=s.ServingDeploymentSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
    )
    @action(detail=True, methods=["post"])
    @idempotent
    def scale(self, request: Request, pk: str) -> Response:
        data = _validated(s.ScaleInputSerializer, request)
        deployment = services.serving_deployment_scale(
            deployment=self.get_object(), actor=request.user, replicas=data["replicas"]
        )
        return self._answer(deployment)

    @extend_schema(
        summary="Delete a serving deployment",
        description="Marks it deleted (`deleted_at`) and the reconciler removes it from the cluster; "
        "the record stays for the history.",
        responses={200: s.ServingDeploymentSerializer},
    )
    def destroy(self, request: Request, pk: str) -> Response:
        deployment = services.serving_deployment_delete(deployment=self.get_object(), actor=request.user)
        return self._answer(deployment)


@extend_schema_view(
    list=extend_schema(
        summary="Granted capacity per pool",
        description="Granted, free and batch GPUs of each pool, and how much of it each of your teams holds "
        "(every team for admins and auditors). Figures come from the portal's grants.",
        responses=s.PoolCapacityRowSerializer(many=True),
    )
)
class PoolCapacityViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = s.PoolCapacityRowSerializer
    filterset_class = NodePoolFilterSet
    ordering_fields = ["name", "cluster__name", "pool_class", "capacity_gpus"]
    ordering = ["cluster__name", "name", "id"]

    def get_queryset(self) -> QuerySet[NodePool]:
        if getattr(self, "swagger_fake_view", False):
            return NodePool.objects.none()
        return node_pool_list(user=self.request.user)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        pools = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        rows = selectors.pool_capacity_rows(user=request.user, pools=pools)
        return self.get_paginated_response(self.get_serializer(rows, many=True).data)


@extend_schema_view(
    list=extend_schema(
        summary="Granted capacity per team",
        description="GPUs each of your teams holds through active grants, per pool, with their hourly cost.",
        responses=s.TeamCapacityRowSerializer(many=True),
    )
)
class TeamCapacityViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = s.TeamCapacityRowSerializer
    filterset_class = filtersets.TeamFilterSet
    ordering_fields = ["slug", "name"]
    ordering = ["slug", "id"]

    def get_queryset(self) -> QuerySet[Team]:
        if getattr(self, "swagger_fake_view", False):
            return Team.objects.none()
        return selectors.teams_visible_to(user=self.request.user)

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        teams = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        rows = selectors.team_capacity_rows(user=request.user, teams=teams)
        return self.get_paginated_response(self.get_serializer(rows, many=True).data)


@extend_schema_view(
    list=extend_schema(
        summary="Granted capacity per pool (deprecated path)",
        description="Deprecated alias of /api/v1/capacity/pools/, with the same answer.",
        deprecated=True,
        responses=s.PoolCapacityRowSerializer(many=True),
    )
)
class PoolCapacityAliasViewSet(PoolCapacityViewSet):
    pass


@extend_schema_view(
    list=extend_schema(
        summary="Granted capacity per team (deprecated path)",
        description="Deprecated alias of /api/v1/capacity/teams/, with the same answer.",
        deprecated=True,
        responses=s.TeamCapacityRowSerializer(many=True),
    )
)
class TeamCapacityAliasViewSet(TeamCapacityViewSet):
    pass


@extend_schema_view(
    list=extend_schema(summary="List audit events", description="Platform admins and auditors only."),
    retrieve=extend_schema(summary="Get an audit event"),
)
class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = s.AuditEventSerializer
    filterset_class = filtersets.AuditEventFilterSet
    permission_classes = [*viewsets.ReadOnlyModelViewSet.permission_classes, SeesEverything]
    ordering_fields = ["created_at", "action"]
    ordering = ["-created_at", "-id"]
    lookup_value_regex = ID

    def get_queryset(self) -> QuerySet[AuditEvent]:
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.none()
        return selectors.audit_event_list(user=self.request.user)
