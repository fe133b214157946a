import time
import pytest
from tests.provisioning.test_queueing import queued  # noqa: F401
from quotas.models import Grant

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

def test_debug(queued, worker):
    org = queued.org
    a = queued.approve(org.team, org.member, gpus=8, borrow=8)
    for _ in range(20):
        time.sleep(2)
        g = Grant.objects.select_related("request").get(pk=a.pk)
        print(g.request.state, g.observed_generation, g.generation, [(c["type"], c["status"], c["reason"], c["message"][:300]) for c in g.conditions])
    assert False
