"""The Dockerfile builds the image the chart and docker-compose run. Without a Docker engine the
image is not built here; these tests read the Dockerfile and hold it to what the chart and the
settings expect (user, port, command, settings module, static files, what is copied in)."""

import json
import re

from django.conf import settings

from tests.chart.dockerfile import dockerfile, instructions
from tests.chart.support import CHART, production_required_env
from tests.testbed import REPO_ROOT


def test_image_user_is_the_charts_non_root_user() -> None:
    image = dockerfile()
    values = (CHART / "values.yaml").read_text()
    assert image.uid != 0 and image.gid != 0
    assert f"runAsUser: {image.uid}" in values and f"runAsGroup: {image.gid}" in values
    # The user is created with exactly these ids.
    created = " ".join(image.runs)
    assert f"groupadd --system --gid {image.gid} portal" in created
    assert f"useradd --system --uid {image.uid} --gid {image.gid}" in created


def test_image_serves_gunicorn_on_the_exposed_port() -> None:
    image = dockerfile()
    assert image.cmd[:2] == ["gunicorn", "portal.wsgi:application"]
    assert image.cmd[image.cmd.index("--bind") + 1] == f"0.0.0.0:{image.port}"
    # The root filesystem is read-only in the chart: nothing may be written beside /tmp.
    assert "--no-control-socket" in image.cmd
    assert settings.WSGI_APPLICATION == "portal.wsgi.application"


def test_image_collects_static_files_with_every_production_setting_at_build() -> None:
    # Static files are collected into the image (read-only at run time), under production settings
    # that need every required variable: a new required variable must be given a build-time value.
    image = dockerfile()
    assert image.env["DJANGO_SETTINGS_MODULE"] == "portal.settings.production"
    (collect,) = [r for r in image.runs if "collectstatic" in r]
    given = set(re.findall(r"\b([A-Z_]+)=", collect))
    assert production_required_env() <= given, production_required_env() - given


def test_secrets_and_local_state_stay_out_of_the_image() -> None:
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", "var", ".git"} <= ignored


def test_dockerfile_parser_joins_continuations_and_skips_comments() -> None:
    text = 'FROM x\n# note\nRUN a \\\n    # inside\n    && b\nCMD ["c", \\\n     "d"]\n'
    (frm, run, cmd) = instructions(text)
    assert frm == ("FROM", "x")
    assert run[0] == "RUN" and run[1].split() == ["a", "&&", "b"]
    assert cmd[0] == "CMD" and json.loads(cmd[1]) == ["c", "d"]
