"""The request wizard: dependent accelerator field, live summary, and the services' errors inline."""

from datetime import timedelta

import pytest
from django.utils import timezone

from pools.models import PoolClass
from quotas.models import CapacityRequest
from quotas.states import RequestState
from tests import factories
from tests.ui.conftest import htmx


def fmt(moment):
    return moment.strftime("%Y-%m-%dT%H:%M")


@pytest.fixture
def valid(world):
    start = timezone.now() + timedelta(hours=1)
    return {
        "team": world.vision.pk,
        "pool_class": PoolClass.INTERACTIVE,
        "accelerator": world.a100.pk,
        "gpus": "4",
        "gpus_per_replica": "1",
        "model_parameters_billion": "",
        "model_precision": "",
        "starts_at": fmt(start),
        "ends_at": fmt(start + timedelta(days=2)),
        "purpose": "serve the vision chat model",
    }


def test_accelerators_follow_the_pool_class_with_free_units_and_price(world, login):
    factories.request(world.bob, world.vision, world.a100, gpus=6)  # pending: holds nothing yet
    alice = login(world.alice)
    interactive = alice.get(
        "/requests/new/", {"pool_class": PoolClass.INTERACTIVE}, **htmx("accelerator-field")
    ).content.decode()
    assert interactive.startswith('\n<div id="accelerator-field">') or 'id="accelerator-field"' in interactive
    assert "NVIDIA A100 80GB · 80 GiB · 24 free · 2.500 per GPU-hour" in interactive
    assert "H100" not in interactive and "L4" not in interactive and "errorlist" not in interactive

    experimentation = alice.get(
        "/requests/new/", {"pool_class": PoolClass.EXPERIMENTATION}, **htmx("accelerator-field")
    ).content.decode()
    assert (
        "A100 MIG 1g.10gb · 10 GiB · 64 free" in experimentation and "NVIDIA A100 80GB" not in experimentation
    )

    nothing = alice.get("/requests/new/", {"pool_class": ""}, **htmx("accelerator-field")).content.decode()
    assert "Choose a pool class first" in nothing


def test_free_units_drop_once_a_grant_holds_gpus(world, login):
    held = factories.request(world.bob, world.vision, world.a100, gpus=6)
    from quotas import services

    services.capacity_request_approve(capacity_request=held, actor=world.admin)
    page = login(world.alice).get(
        "/requests/new/", {"pool_class": PoolClass.INTERACTIVE}, **htmx("accelerator-field")
    )
    assert "· 18 free ·" in page.content.decode()


def test_summary_estimates_cost_and_memory_fit(world, login, valid):
    alice = login(world.alice)
    fits = alice.get(
        "/requests/new/",
        {**valid, "model_parameters_billion": "13", "model_precision": "bf16"},
        **htmx("wizard-summary"),
    ).content.decode()
    assert "48.0 hours" in fits
    assert "480.00" in fits  # 4 GPUs x 48 h x 2.50
    assert "Fits: the model needs about 29.1 GiB per replica; 1 \N{MULTIPLICATION SIGN} NVIDIA A100" in fits

    misfit = alice.get(
        "/requests/new/",
        {**valid, "model_parameters_billion": "70", "model_precision": "fp16"},
        **htmx("wizard-summary"),
    ).content.decode()
    assert "Does not fit: the model needs about 156.5 GiB per replica" in misfit
    assert "Span 2 units per replica" in misfit

    half_typed = alice.get(
        "/requests/new/", {**valid, "gpus": "", "ends_at": "not a date"}, **htmx("wizard-summary")
    ).content.decode()
    assert "Give a start and a later end." in half_typed and "errorlist" not in half_typed


def test_a_valid_request_is_submitted_and_redirects_to_its_page(world, login, valid):
    alice = login(world.alice)
    response = alice.post("/requests/new/", valid, **htmx())
    req = CapacityRequest.objects.get()
    assert response.status_code == 200
    assert response["HX-Redirect"] == f"/requests/{req.pk}/"
    assert req.state == RequestState.PENDING_LEAD and req.gpus == 4 and req.pool == world.interactive

    plain = alice.post("/requests/new/", valid)
    assert plain.status_code == 302 and plain["Location"].startswith("/requests/")


def error_for(response, field):
    """The error list Django renders for `field` (its id ties it to the input's aria-describedby)."""
    body = response.content.decode()
    marker = f'id="id_{field}_error"'
    assert marker in body, body
    start = body.index(marker)
    return body[start : body.index("</ul>", start)]


def test_too_many_gpus_is_refused_inline_with_the_pools_numbers(world, login, valid):
    response = login(world.alice).post("/requests/new/", {**valid, "gpus": "30"}, **htmx())
    assert response.status_code == 422
    assert response.content.decode().startswith('<form id="wizard-form"')
    assert (
        "Pool local/interactive-a100 cannot take 30 more: 0 of 32 already granted and 8 kept as warm "
        "headroom, so only 24 can be granted." in error_for(response, "gpus")
    )
    assert 'aria-invalid="true"' in response.content.decode()
    assert not CapacityRequest.objects.exists()


def test_memory_misfit_is_refused_inline(world, login, valid):
    response = login(world.alice).post(
        "/requests/new/", {**valid, "model_parameters_billion": "70", "model_precision": "fp16"}, **htmx()
    )
    assert response.status_code == 422
    error = error_for(response, "accelerator")
    assert "A 70B-parameter model at fp16 needs about 156.5 GiB per replica" in error
    assert "1 x NVIDIA A100 80GB offers 80 GiB" in error
    assert "Or span 2 NVIDIA A100 80GB units per replica." in error


def test_end_before_start_is_refused_inline(world, login, valid):
    start = timezone.now() + timedelta(days=3)
    response = login(world.alice).post(
        "/requests/new/",
        {**valid, "starts_at": fmt(start), "ends_at": fmt(start - timedelta(days=1))},
    )
    assert response.status_code == 422
    assert "The end must be after the start." in error_for(response, "ends_at")
    assert "<html" in response.content.decode()  # a plain post gets the whole page back


def test_shape_errors_come_from_the_form_before_the_service(world, login, valid):
    response = login(world.alice).post(
        "/requests/new/",
        {**valid, "gpus": "0", "accelerator": str(world.h100.pk), "purpose": ""},
        **htmx(),
    )
    assert response.status_code == 422
    assert "Ensure this value is greater than or equal to 1." in error_for(response, "gpus")
    assert "Choose one of the accelerators offered for this pool class." in error_for(response, "accelerator")
    assert "This field is required." in error_for(response, "purpose")
    assert 'name="gpus" value="0"' in response.content.decode()
    assert "autofocus" in response.content.decode()


def test_someone_without_a_team_is_told_how_to_join(world, login):
    loner = factories.user("loner")
    response = login(loner).get("/requests/new/")
    assert response.status_code == 403
    assert "You are not a member of any team yet" in response.content.decode()


def test_absurd_numbers_are_form_errors_not_server_errors(world, login, valid):
    alice = login(world.alice)
    huge = {**valid, "gpus": str(10**30), "model_parameters_billion": str(10**30), "model_precision": "bf16"}
    summary = alice.get("/requests/new/", huge, **htmx("wizard-summary"))
    assert summary.status_code == 200
    assert "Does not fit" not in summary.content.decode()  # nothing computed from unparseable input
    response = alice.post("/requests/new/", huge, **htmx())
    assert response.status_code == 422
    assert "Ensure this value is less than or equal to 100000." in error_for(response, "gpus")
    assert "Ensure that there are no more than 7 digits in total." in error_for(
        response, "model_parameters_billion"
    )
    assert not CapacityRequest.objects.exists()
