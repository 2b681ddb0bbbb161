"""Ray Client connections are tried again when the head fails to start the client's
server (a transient Ray 2.60 fault), and only then."""

import pytest

from rayq.distributed import cluster


class FlakyRay:
    def __init__(self, errors):
        self.errors = list(errors)
        self.inits = self.shutdowns = 0

    def init(self, address, **opts):
        self.inits += 1
        if self.errors:
            raise self.errors.pop(0)

    def shutdown(self):
        self.shutdowns += 1


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(cluster.time, "sleep", lambda s: None)


def test_a_failed_client_server_start_is_tried_again():
    ray = FlakyRay(
        [
            ConnectionAbortedError(
                "Initialization failure from server: RuntimeError: Starting Ray "
                "client server failed. See ray_client_server_23001.err"
            )
        ]
        * 2
    )
    cluster._client_connect(ray, "ray://h:10001", {})
    assert (ray.inits, ray.shutdowns) == (3, 2)


def test_other_errors_and_the_last_attempt_are_raised():
    ray = FlakyRay([ConnectionError("connection refused")])
    with pytest.raises(ConnectionError, match="refused"):
        cluster._client_connect(ray, "ray://h:10001", {})
    assert ray.inits == 1
    ray = FlakyRay([RuntimeError("Starting Ray client server failed")] * 10)
    with pytest.raises(RuntimeError):
        cluster._client_connect(ray, "ray://h:10001", {})
    assert ray.inits == cluster.CLIENT_CONNECT_ATTEMPTS
