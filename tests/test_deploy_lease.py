"""Shared state under concurrency (issue 15): compare-and-swap writes on every storage backend (a local file, real
SeaweedFS S3, real fake-gcs-server), the deploy lease built on them, and the serving record's compare-and-swap.
No Triton here: the concurrent deployments themselves are in test_deploy_concurrency.py."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from kfp_mlops.components.deploy.errors import DeployError, Stage
from kfp_mlops.components.deploy.lease import Lease, lease_uri
from kfp_mlops.components.shared import records, storage

pytestmark = pytest.mark.servers


def test_write_if_creates_once_and_swaps_only_from_the_version_read(root):
    uri = f"{root}/state.json"
    assert storage.read_versioned(uri) is None
    first = storage.write_if(uri, b"one", None)
    with pytest.raises(storage.ConflictError, match="exists already"):
        storage.write_if(uri, b"other", None)
    current = storage.read_versioned(uri)
    assert current is not None and current.data == b"one" and current.version == first
    second = storage.write_if(uri, b"two", first)
    assert second != first
    with pytest.raises(storage.ConflictError, match="changed since it was read"):
        storage.write_if(uri, b"stale", first)  # a writer that read "one" loses
    assert storage.read_bytes(uri) == b"two"


def test_of_many_concurrent_creators_exactly_one_wins(root):
    uri = f"{root}/race.json"
    barrier, won, lost = threading.Barrier(8), [], []

    def create(index: int) -> None:
        barrier.wait()
        try:
            storage.write_if(uri, f"writer {index}".encode(), None)
            won.append(index)
        except storage.ConflictError:
            lost.append(index)

    threads = [threading.Thread(target=create, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == 7
    assert storage.read_bytes(uri) == f"writer {won[0]}".encode()


def test_the_lease_is_held_by_one_deployment_and_names_its_holder(root):
    first = Lease(root, "churn", "run-a", lease_seconds=300)
    second = Lease(root, "churn", "run-b", lease_seconds=300)
    first.acquire(wait_seconds=0)
    with pytest.raises(DeployError) as held:
        second.acquire(wait_seconds=0)
    assert held.value.stage == Stage.LEASE and held.value.rolled_back
    assert "another deploy of churn holds the lease since " in str(held.value)
    assert "(run run-a;" in str(held.value) and "nothing was changed" in str(held.value)
    Lease(root, "other-model", "run-c", lease_seconds=300).acquire(wait_seconds=0)  # one lease per model name
    first.renew()
    first.release()
    second.acquire(wait_seconds=0)
    document = json.loads(storage.read_bytes(lease_uri(root, "churn")))
    assert document["holder"] == "run-b" and not document["released"]


def test_a_waiting_deployment_takes_the_lease_when_the_holder_releases_it(root):
    holder = Lease(root, "churn", "run-a", lease_seconds=300)
    holder.acquire(wait_seconds=0)
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    waiting = Lease(root, "churn", "run-b", lease_seconds=300)
    waiting.acquire(wait_seconds=30)  # polls every 2 s
    timer.join()
    assert json.loads(storage.read_bytes(lease_uri(root, "churn")))["holder"] == "run-b"


def test_an_expired_lease_is_taken_over_and_its_late_holder_stops_without_clobbering(root):
    """A deployment whose lease expired (its pod was frozen, say) finds out at its next renewal: it must not go on
    to change what serves, and its release must not free the new holder's lease."""
    late = Lease(root, "churn", "run-late", lease_seconds=300)
    late.acquire(wait_seconds=0)
    uri = lease_uri(root, "churn")
    current = storage.read_versioned(uri)
    expired = json.loads(current.data) | {"expires_at": (datetime.now(UTC) - timedelta(seconds=1)).isoformat()}
    late.version = storage.write_if(uri, json.dumps(expired).encode(), current.version)  # time passes
    newcomer = Lease(root, "churn", "run-new", lease_seconds=300)
    newcomer.acquire(wait_seconds=0)
    with pytest.raises(DeployError, match=r"expired and run run-new took it over") as lost:
        late.renew()
    assert lost.value.stage == Stage.LEASE
    late.release()
    document = json.loads(storage.read_bytes(uri))
    assert document["holder"] == "run-new" and not document["released"]


def test_a_renewal_interrupted_after_it_landed_still_lets_its_holder_renew_and_release(root):
    """SIGTERM can land between a renewal's write and the bookkeeping of its version: the lease is still ours (the
    token in the object says so), so the rollback's release must free it, not leave it held until it expires."""
    holder = Lease(root, "churn", "run-a", lease_seconds=300)
    holder.acquire(wait_seconds=0)
    landed = holder.version
    holder.renew()
    holder.version = landed  # the renewal's new version was never kept
    holder.renew()
    holder.version = landed
    holder.release()
    assert json.loads(storage.read_bytes(lease_uri(root, "churn")))["released"]
    Lease(root, "churn", "run-b", lease_seconds=300).acquire(wait_seconds=0)


def test_an_unreadable_lease_object_does_not_block_deployments_forever(root):
    storage.write_bytes(lease_uri(root, "churn"), b"{not json")
    Lease(root, "churn", "run-a", lease_seconds=300).acquire(wait_seconds=0)


def _record(version: int, run_id: str) -> records.ServingRecord:
    deployment = records.Deployment(endpoint="triton:8001", model_name="churn", version=version, repository="s3://m")
    return records.ServingRecord(model=f"s3://runs/{run_id}/model", metrics={"roc_auc": 0.7}, run_id=run_id,
                                 deployment=deployment)  # fmt: skip


def test_the_serving_record_never_goes_back_to_an_older_deployed_version(root):
    """Two runs deploy versions 2 and 3 one after the other; their record steps run in the other order: the record
    keeps naming version 3, which is what serves."""
    uri = f"{root}/serving.json"
    assert records.write_record(uri, _record(3, "run-3")).run_id == "run-3"
    standing = records.write_record(uri, _record(2, "run-2"))
    assert standing.run_id == "run-3" and standing.deployment.version == 3
    assert records.read_record(uri).deployment.version == 3
    assert records.write_record(uri, _record(4, "run-4")).deployment.version == 4


def test_concurrent_record_writers_each_see_the_others_write(root):
    """Eight record steps at once, versions 1..8: whatever the interleaving, the record ends at version 8 (a plain
    last-writer-wins write could end anywhere)."""
    uri = f"{root}/serving.json"
    barrier = threading.Barrier(8)

    def write(version: int) -> None:
        barrier.wait()
        records.write_record(uri, _record(version, f"run-{version}"))

    threads = [threading.Thread(target=write, args=(version,)) for version in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert records.read_record(uri).deployment.version == 8
