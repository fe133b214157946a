import pytest

from quotas import services
from tests import factories


@pytest.mark.parametrize("who", ["alice", "bob", "carol", "admin", "auditor"])
def test_main_pages_render(world, login, who):
    factories.request(world.alice, world.vision, world.a100)
    client = login(getattr(world, who))
    for url in ["/", "/requests/", "/inbox/", "/team/"]:
        response = client.get(url, follow=True)
        assert response.status_code == 200, url


def test_the_request_list_filters_by_state(world, login):
    pending = factories.request(world.alice, world.vision, world.a100)
    rejected = factories.request(world.alice, world.vision, world.a100)
    services.capacity_request_reject(capacity_request=rejected, actor=world.bob, comment="no")
    alice = login(world.alice)
    page = alice.get("/requests/", {"state": "rejected"}).content.decode()
    assert f'href="/requests/{rejected.pk}/"' in page and f'href="/requests/{pending.pk}/"' not in page
    page = alice.get("/requests/", {"state": "nonsense"}).content.decode()
    assert f'href="/requests/{rejected.pk}/"' in page and f'href="/requests/{pending.pk}/"' in page
