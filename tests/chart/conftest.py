"""Fixtures for the chart's tests: Helm, and the chart rendered with each value set."""

import os
from collections.abc import Iterator

import pytest

from tests.chart.support import VALUE_SETS, Helm, Rendered, build_paths


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    binary = build_paths()["HELM_BIN"] / "helm"
    if not os.access(binary, os.X_OK):
        # FAIL, not skip: a chart check that silently does not run proves nothing.
        pytest.fail(
            f"{binary} is not built: run `make testbed-build` (scripts/testbed/build.sh).", pytrace=False
        )
    yield Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session", params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, helm: Helm) -> Rendered:
    values, sets = VALUE_SETS[request.param]
    return Rendered(helm.render(values, sets).objects, request.param)
