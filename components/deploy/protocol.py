"""The deployment's protocol (see core.py): stage and verify the candidate, commit, promote, finish; roll back on
any failure. ``Progress`` records the stage reached: where an unexpected error is reported, and what the rollback
undoes."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from kfp_mlops.components.deploy.errors import DeployError, Stage
from kfp_mlops.components.deploy.lease import Lease
from kfp_mlops.components.deploy.package import Package, Reference
from kfp_mlops.components.deploy.replica import SETTLE_SECONDS, Replica, check_resolves, replica_endpoints
from kfp_mlops.components.deploy.repository import STAGING_PREFIX, Repository, State
from kfp_mlops.components.deploy.verification import Verification, verify
from kfp_mlops.components.shared import cancellation, layout, triton_config
from kfp_mlops.components.shared.config import DeployConfig
from kfp_mlops.components.shared.records import Deployment

Status = Literal["not_deployed", "deployed", "already_serving"]
# A cancelled deployment's rollback fits in Kubernetes' default terminationGracePeriodSeconds (30 s; SIGKILL after):
# each of its waits is cut to what remains of this budget; what it cannot finish, the next deployment clears.
CANCELLED_ROLLBACK_SECONDS = 25.0


@dataclass(frozen=True)
class DeployResult:
    """``deployment`` is None when nothing was deployed (no model repository configured)."""

    status: Status
    deployment: Deployment | None = None
    previous_version: int | None = None
    pruned: list[int] = field(default_factory=list)
    replicas: list[str] = field(default_factory=list)

    @property
    def version(self) -> int:
        return self.deployment.version if self.deployment else 0

    def describe(self) -> str:
        """One line for the console."""
        if self.deployment is None:
            return "deploy.model_repository is empty: not deployed"
        d = self.deployment
        where = f"{d.model_name} version {d.version} serves at {d.endpoint} from {d.repository}"
        if self.status == "already_serving":
            return f"{where} (already serving this package: nothing changed)"
        v = d.verified
        previous = f"previous {self.previous_version}" if self.previous_version else "first version"
        return (
            f"{where} ({previous}; verified {v['rows']:.0f} rows, max |diff| {v['max_abs_diff']:.2e}, "
            f"p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms on {len(self.replicas)} replica(s)"
            f"{f'; pruned {self.pruned}' if self.pruned else ''})"
        )


@dataclass
class Progress:
    """How far a deployment got: VERIFICATION, then COMMIT (``<name>/<N>/`` may exist: a resumed version starts
    here), then PROMOTION (the served config may name N)."""

    stage: Stage

    @property
    def committed(self) -> bool:
        return self.stage in (Stage.COMMIT, Stage.PROMOTION)

    @property
    def config_written(self) -> bool:
        return self.stage == Stage.PROMOTION

    def error(self, exc: BaseException) -> DeployError:
        """``exc`` as a DeployError: itself, a cancellation (an interrupt), or a failure at the stage reached."""
        if isinstance(exc, DeployError):
            return exc
        stage = Stage.CANCELLED if isinstance(exc, KeyboardInterrupt | SystemExit) else self.stage
        return DeployError(stage, f"{type(exc).__name__}: {exc}")


class Rollout:
    """The rollout of a package into a repository and onto every replica (``run``)."""

    def __init__(self, package: Package, repository: Repository, settings: DeployConfig, lease: Lease):
        self.package = package
        self.repository = repository
        self.settings = settings
        self.lease = lease
        self.name = settings.model_name
        self.replicas: dict[str, Replica] = {}
        self.unresolvable: dict[str, DeployError] = {}
        self.deadline: float | None = None  # set by a cancelled deployment's rollback: every wait ends by then

    @property
    def timeout(self) -> float:
        """A readiness wait: ready_timeout_seconds, or what remains of a cancelled rollback's budget."""
        return self._bounded(float(self.settings.ready_timeout_seconds))

    @property
    def unload_timeout(self) -> float:
        return self._bounded(max(float(self.settings.ready_timeout_seconds), SETTLE_SECONDS))

    def _bounded(self, seconds: float) -> float:
        return seconds if self.deadline is None else max(min(seconds, self.deadline - time.monotonic()), 0.1)

    def resolve(self, endpoint: str) -> None:
        """DeployError at once when the host of ``endpoint`` does not resolve (remembered: asked again, e.g. by a
        rollback, it fails again without resolving or waiting)."""
        if endpoint not in self.unresolvable and endpoint not in self.replicas:
            if endpoint == self.settings.triton_url:
                key = "deploy.triton_url"
            else:
                key = f"a replica of deploy.replicas_host {self.settings.replicas_host!r}"
            try:
                check_resolves(endpoint, key)
            except DeployError as exc:
                self.unresolvable[endpoint] = exc
        if endpoint in self.unresolvable:
            raise self.unresolvable[endpoint]

    def replica(self, endpoint: str) -> Replica:
        """The replica at ``endpoint``, once it answers (within ready_timeout_seconds)."""
        if endpoint not in self.replicas:
            self.resolve(endpoint)
            replica = Replica(endpoint)
            replica.deadline = self.deadline
            self.replicas[endpoint] = replica
            replica.wait_until_live(self.timeout)
        return self.replicas[endpoint]

    def _converge(self, endpoint: str, version: int) -> None:
        self.replica(endpoint).converge(self.name, version, self.timeout, settle=self.unload_timeout)

    def _unload(self, endpoint: str) -> None:
        self.replica(endpoint).unload(self.name, self.unload_timeout)

    def run(self, validation_path: str, after_promotion: Callable[[DeployResult], Any] | None = None) -> DeployResult:
        """The rollout; ``after_promotion(result)`` runs once the version serves, still under the lease (the
        registry's aliases move there: they follow the deployment that won)."""
        try:
            return self._run(validation_path, after_promotion)
        finally:
            for replica in self.replicas.values():
                replica.close()

    def _run(self, validation_path: str, after_promotion: Callable[[DeployResult], Any] | None) -> DeployResult:
        self.resolve(self.settings.triton_url)  # before anything is read or written
        endpoints = replica_endpoints(self.settings)
        for endpoint in endpoints:
            self.resolve(endpoint)
        self.lease.acquire(self.settings.lease_wait_seconds)
        try:
            result = self._deploy(validation_path, endpoints)
            if after_promotion is not None:
                self.lease.renew()
                after_promotion(result)
            return result
        finally:
            self.lease.release()

    def _deploy(self, validation_path: str, endpoints: list[str]) -> DeployResult:
        """The deployment onto the replicas at ``endpoints``, while this one holds the lease."""
        self._check_control(endpoints)
        state = self.repository.state()
        served = state.served
        if served is not None and self._serves_package(state, served):
            self._clear_leftovers(state, endpoints)
            pruned = self._finish(served, self.repository.state())
            marker = state.versions[served] or {}
            return self._result("already_serving", served, marker.get("verified", {}), None, pruned)
        reference = Reference.compute(
            self.package, validation_path, self.settings.verify.rows, self.settings.max_batch_size
        )
        version = self._clear_leftovers(state, endpoints)
        resumed = version in state.versions
        progress = Progress(Stage.COMMIT if resumed else Stage.VERIFICATION)
        try:
            verification = self._verify_candidate(version, endpoints, reference)
            marker = {
                "content_hash": self.package.content_hash,
                "model_name": self.name,
                "version": version,
                "package": self.package.model_dir,
                "deployed_by": self.lease.holder,
                "verified": verification.figures(),
                "committed_at": datetime.now(UTC).isoformat(),
                # what a client needs besides the graph (feature columns, classes): `kfp-mlops predict` reads it
                "model_config": self.package.config.model_dump(mode="json"),
            }
            self.lease.renew()  # still ours: nobody else writes <name>/ until the next renewal is due
            progress.stage = Stage.COMMIT
            if resumed:  # committed by an interrupted attempt with this package: refresh its figures
                self.repository.write_text(
                    layout.version_path(self.name, version, layout.VERSION_METADATA_FILE), json.dumps(marker, indent=2)
                )
            else:
                self.repository.write_version(self.name, version, self.package.files(), marker)
            self.lease.renew()
            progress.stage = Stage.PROMOTION
            self.repository.write_text(
                f"{self.name}/{triton_config.CONFIG_FILE}", self.package.config_for(self.name, version).to_pbtxt()
            )
            for endpoint in endpoints:
                try:
                    self._converge(endpoint, version)
                except DeployError as exc:
                    raise DeployError(Stage.PROMOTION, f"promotion failed: {exc}") from None
        except BaseException as exc:
            error = progress.error(exc)
            if error.stage == Stage.LEASE:  # another deployment owns <name>/ now: only our staging folder is ours
                problems = self._drop_candidate(endpoints)
                outcome = "stopped without changing what serves" + (f" ({'; '.join(problems)})" if problems else "")
                raise DeployError(Stage.LEASE, f"{error}; {outcome}") from None
            if error.stage == Stage.CANCELLED:
                self.deadline = time.monotonic() + CANCELLED_ROLLBACK_SECONDS
                for replica in self.replicas.values():
                    replica.deadline = self.deadline
            problems = self._roll_back(state, version, progress, endpoints)
            if problems:
                outcome = f"rollback incomplete: {'; '.join(problems)}"
            elif served:
                outcome = f"rolled back: version {served} keeps serving"
            else:
                outcome = "rolled back: nothing was serving, nothing serves"
            raise DeployError(error.stage, f"{error}; {outcome}", rolled_back=not problems) from None
        self.lease.renew()
        pruned = self._finish(version, self.repository.state())
        return self._result("deployed", version, verification.figures(), served, pruned)

    def _check_control(self, endpoints: list[str]) -> None:
        """Every replica answers model control (one repository index each) before anything is written: a Triton
        that restricts it to a key this deployment lacks fails here, with nothing changed."""
        for endpoint in endpoints:
            try:
                self.replica(endpoint).states(self.name)
            except DeployError as exc:
                raise DeployError(exc.stage, f"{exc}; nothing was changed", rolled_back=True) from None

    def _serves_package(self, state: State, served: int) -> bool:
        """The served version holds this package's content and the served config is the one it would get."""
        marker = state.versions.get(served)
        if not marker or marker.get("content_hash") != self.package.content_hash or state.config_text is None:
            return False
        try:
            current = triton_config.ModelConfig.from_pbtxt(state.config_text)
        except ValueError:
            return False
        return current.model_copy(update={"version_policy": None}) == self.package.serving

    def _clear_leftovers(self, state: State, endpoints: list[str]) -> int:
        """Remove what interrupted deployments left (staging folders, uncommitted versions, versions never
        promoted, other deployments' candidates: with the lease held, none of them is in use); return the version
        to deploy: a committed, never promoted version of this very package (a retried step resumes it), else the
        one after the served version."""
        served = state.served or 0
        resumable = [
            v
            for v, marker in state.versions.items()
            if v > served and marker and marker.get("content_hash") == self.package.content_hash
        ]
        resume = max(resumable, default=None)
        for version, marker in state.versions.items():
            if version not in (served, resume) and (marker is None or version > served):
                self.repository.delete(layout.version_path(self.name, version))
        for other in state.other:
            if other.startswith(STAGING_PREFIX):
                self.repository.delete(f"{self.name}/{other}")
        for staged in self.repository.staged():
            for endpoint in endpoints:  # a deployment killed while verifying left its candidate loaded
                self.replica(endpoint).unload(staged, self.unload_timeout)
            self.repository.delete(staged)
        return resume if resume is not None else served + 1

    def _verify_candidate(self, version: int, endpoints: list[str], reference: Reference) -> Verification:
        """Stage this deployment's candidate (``<name>-candidate-<8 hex>``) as version ``version``, load and verify
        it on every replica, then unload and remove it (before promotion: a GPU then holds two copies of the model at
        most, not three)."""
        candidate = self.repository.candidate
        marker = {"content_hash": self.package.content_hash, "candidate_of": self.name, "version": version}
        self.repository.write_version(candidate, version, self.package.files(), marker)
        config = self.package.config_for(candidate, version).to_pbtxt()
        self.repository.write_text(f"{candidate}/{triton_config.CONFIG_FILE}", config)
        results = []
        for endpoint in endpoints:
            replica = self.replica(endpoint)
            replica.load(candidate, version, self.timeout)
            results.append(verify(replica, candidate, version, reference, self.settings))
            self.lease.renew()
        problems = self._drop_candidate(endpoints)
        if problems:
            raise DeployError(Stage.VERIFICATION, f"removing the verified candidate failed: {'; '.join(problems)}")
        return Verification(
            rows=reference.rows,
            max_abs_diff=max(r.max_abs_diff for r in results),
            p50_ms=max(r.p50_ms for r in results),
            p99_ms=max(r.p99_ms for r in results),
            requests=self.settings.verify.requests,
        )

    def _drop_candidate(self, endpoints: list[str]) -> list[str]:
        """Unload the candidate on every replica (a no-op where it is not loaded), then remove its directory (not
        while a replica may still be loading from it: the python backend then never finishes); returns what
        failed."""
        problems = []
        for endpoint in endpoints:
            try:
                self.replica(endpoint).unload(self.repository.candidate, self.unload_timeout)
            except Exception as exc:
                problems.append(f"unloading {self.repository.candidate} on {endpoint}: {exc}")
        if not problems:
            try:
                self.repository.delete(self.repository.candidate)
            except Exception as exc:
                problems.append(f"removing {self.repository.candidate} from {self.repository.uri}: {exc}")
        return problems

    def _roll_back(self, state: State, version: int, progress: Progress, endpoints: list[str]) -> list[str]:
        """Back to the state before: the candidate gone, the previous config, the previous version (only) ready on
        every replica, the new version's directory removed. Returns the steps that failed."""
        with cancellation.sigterm_ignored():
            problems = self._drop_candidate(endpoints)
            previous = state.served
            config_file = f"{self.name}/{triton_config.CONFIG_FILE}"
            steps: list[tuple[str, Callable[[], None]]] = []
            if progress.config_written and state.config_text is not None:
                text = state.config_text
                steps.append(("restoring config.pbtxt", lambda: self.repository.write_text(config_file, text)))
            elif progress.config_written:
                steps.append(("removing config.pbtxt", lambda: self.repository.delete(config_file)))
            for endpoint in endpoints:
                if previous is not None:  # reloads only where the new version got loaded
                    step = functools.partial(self._converge, endpoint, previous)
                    steps.append((f"serving version {previous} on {endpoint}", step))
                else:
                    steps.append((f"unloading {self.name} on {endpoint}", functools.partial(self._unload, endpoint)))
            if progress.committed:
                remove = functools.partial(self.repository.delete, layout.version_path(self.name, version))
                steps.append((f"removing version {version}", remove))
            for what, step in steps:
                try:
                    step()
                except Exception as exc:
                    problems.append(f"{what}: {exc}")
            if previous is None and not problems and not self.repository.state().versions:
                self.repository.delete(self.name)  # nothing serves: the repository holds nothing of the model
            return problems

    def _finish(self, version: int, state: State) -> list[int]:
        """After promotion (or when the package already serves): old versions pruned, and every replica, resolved
        again (a pod may have started meanwhile), serving ``version`` only, without the candidate."""
        keep = sorted((v for v in state.versions if v <= version), reverse=True)[: self.settings.keep_versions]
        pruned = sorted(v for v in state.versions if v not in keep and v != version)
        for old in pruned:
            self.repository.delete(layout.version_path(self.name, old))
        endpoints = replica_endpoints(self.settings)
        problems = self._drop_candidate(endpoints)
        for endpoint in endpoints:
            try:
                self._converge(endpoint, version)
            except DeployError as exc:
                problems.append(str(exc))
        if problems:
            raise DeployError(
                Stage.PROMOTION,
                f"version {version} is promoted, but not every replica is in line: {'; '.join(problems)}",
            )
        return pruned

    def _result(
        self, status: Status, version: int, verified: dict[str, float], previous: int | None, pruned: list[int]
    ) -> DeployResult:
        deployment = Deployment(
            endpoint=self.settings.triton_url,
            model_name=self.name,
            version=version,
            repository=self.settings.model_repository,
            verified=verified,
        )
        return DeployResult(status, deployment, previous, pruned, sorted(self.replicas))
