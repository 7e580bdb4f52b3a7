"""The bounded ``kfp.Client`` (v2beta1 API) and its errors: ``connect`` gives a client whose every request gives up in
time, ``on_server`` turns kfp_server_api and urllib3 errors into one-line ``KfpApiError``s that name the fix in the
caller's words (``SettingNames``: the CLI's flags, a step's config keys). Also the list helpers every call shares.
Tokens are never logged."""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kfp_mlops.components.shared.errors import ServiceError

if TYPE_CHECKING:
    import kfp.client

DEFAULT_TIMEOUT_SECONDS = 30.0
PAGE_SIZE = 100
_EQUALS = 1  # the filter operation as kfp.Client sends it (backend/api/v2beta1/filter.proto)


class KfpApiError(ServiceError):
    """A cluster operation failed; ``exit_code`` is 2 if the command line must change, 1 if the server failed."""


@dataclass(frozen=True)
class SettingNames:
    """How the caller spells each connection setting in the fix an error message names: the CLI its flags, the
    drift step its ``monitoring`` config keys. The defaults are ``kfp.Client``'s own argument names."""

    host: str = "host"
    namespace: str = "namespace"
    token: str = "existing_token"
    kube_context: str = "kube_context"
    ssl_ca_cert: str = "ssl_ca_cert"
    timeout: str = "request_timeout"


@dataclass(frozen=True)
class Connection:
    """How to reach the KFP API: what ``kfp.Client`` accepts. No host: kube config (``kube_context``) or, in a pod,
    the in-cluster service with the pod's service-account token. ``timeout``: seconds per request."""

    host: str = ""
    namespace: str = ""
    existing_token: str = field(default="", repr=False)
    kube_context: str = ""
    ssl_ca_cert: str = ""
    ui_host: str = ""
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    names: SettingNames = SettingNames()

    def __post_init__(self) -> None:
        if self.host and not self.host.startswith(("http://", "https://")):
            raise ValueError(f"{self.names.host} {self.host!r}: expected a URL starting with http:// or https://")
        if not self.timeout > 0:
            raise ValueError(f"request timeout must be > 0 seconds, got {self.timeout}")


# --- connection ---------------------------------------------------------------------------------------------------


def connect(connection: Connection) -> kfp.client.Client:
    """A ``kfp.Client`` whose every request gives up after ``connection.timeout`` seconds. Its health check at
    construction is one attempt, and a multi-user server without a namespace is refused with a clear error."""
    names = connection.names
    with _explained(connection.host or "the KFP server", connection.timeout, connection.namespace, names):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
            client = _bounded_client_class()(
                request_timeout=connection.timeout,
                host=connection.host or None,
                namespace=connection.namespace or "kubeflow",  # kfp.Client's "not set"
                existing_token=connection.existing_token or None,
                kube_context=connection.kube_context or None,
                ssl_ca_cert=connection.ssl_ca_cert or None,
                ui_host=connection.ui_host or None,
            )
    client.setting_names = names  # for on_server's messages
    if client.multi_user and not client.get_user_namespace():
        raise KfpApiError(f"{client.kfp_host} is a multi-user deployment: pass {names.namespace} (your profile)", 2)
    return client


@functools.cache
def _bounded_client_class() -> type:
    """Defined on first use: importing kfp takes a second, and the CLI imports this module for every command."""
    import kfp.client
    import kfp_server_api
    import urllib3

    class BoundedRESTClient(kfp_server_api.rest.RESTClientObject):
        """Gives every request a (connect, read) timeout unless the call sets its own."""

        def __init__(self, configuration: Any, timeout: float) -> None:
            super().__init__(configuration)
            self.timeout = (timeout, timeout)

        def request(self, method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
            return super().request(method, url, *args, _request_timeout=_request_timeout or self.timeout, **kwargs)

    class BoundedClient(kfp.client.Client):
        """kfp.Client with bounded requests: kfp.Client sets no timeout, urllib3 would retry a stalled read 3 times,
        and the constructor's health check is tried 5 times, 5 s apart, even on 401. Requests are not retried and
        redirects are returned, not followed, so a login page in front of the API is reported as such."""

        def __init__(self, *, request_timeout: float, **kwargs: Any) -> None:
            self.request_timeout = request_timeout
            self.multi_user = False
            super().__init__(**kwargs)
            self._bound_requests()
            self.kfp_host = kwargs.get("host") or self._existing_config.host  # named in error messages
            self.kfp_namespace = self.get_user_namespace()

        def _bound_requests(self) -> None:
            api_client = self._healthz_api.api_client  # one ApiClient, shared by every API of this client
            if not isinstance(api_client.rest_client, BoundedRESTClient):
                api_client.configuration.retries = urllib3.Retry(total=0, redirect=0, raise_on_redirect=False)
                api_client.rest_client = BoundedRESTClient(api_client.configuration, self.request_timeout)

        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            self._bound_requests()  # called from kfp.Client.__init__, before the constructor above returns
            healthz = self._healthz_api.healthz_service_get_healthz()
            self.multi_user = bool(healthz.multi_user)
            return healthz

    return BoundedClient


@contextmanager
def _explained(host: str, timeout: float, namespace: str, names: SettingNames) -> Iterator[None]:
    """Turn kfp_server_api and urllib3 errors into one-line KfpApiErrors naming the fix."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as exc:
        raise _http_error(exc, host, namespace, names) from None
    except urllib3.exceptions.HTTPError as exc:
        reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
        if isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
            reason,
            urllib3.exceptions.NewConnectionError,  # a refused or unresolved connection, despite its base
        ):
            raise KfpApiError(
                f"no answer from {host} within {timeout:g} s (raise {names.timeout}, or check that the server is up)"
            ) from None
        detail = str(reason).split("connection: ")[-1]  # drop urllib3's "<HTTPConnection object at 0x...>"
        raise KfpApiError(f"cannot reach {host}: {detail}; check {names.host}") from None


def _http_error(exc: Any, host: str, namespace: str, names: SettingNames) -> KfpApiError:
    status = exc.status or 0
    message = _server_message(exc.body)
    if status == 401:
        return KfpApiError(
            f"{host} refused the request as unauthenticated (HTTP 401{': ' + message if message else ''}): pass a "
            f"valid bearer token with {names.token}, or {names.kube_context}",
            2,
        )
    if status == 403:
        where = f" in namespace {namespace}" if namespace else ""
        return KfpApiError(
            f"{host} denied access{where} (HTTP 403{': ' + message if message else ''}): the identity of "
            f"{names.token} (or of your kube credentials) lacks permission; check {names.namespace}",
            2,
        )
    if 300 <= status < 400:
        location = (exc.headers or {}).get("Location", "?")
        return KfpApiError(
            f"{host} redirected to {location} (a login page?): pass {names.token}, or {names.host} of the API itself",
            2,
        )
    if status == 404:
        return KfpApiError(f"not found at {host} (HTTP 404): {message or f'is {names.host} the KFP API endpoint?'}", 2)
    if status == 400:
        return KfpApiError(f"{host} rejected the request (HTTP 400): {message}", 2)
    if status == 0:
        return KfpApiError(f"TLS error with {host}: {exc.reason} (pass {names.ssl_ca_cert} for a private CA)")
    return KfpApiError(f"{host} failed (HTTP {status} {exc.reason or ''}): {message or 'no details'}".strip())


def _server_message(body: Any) -> str:
    """The message of an error body: grpc-gateway's ``message``, the upload handler's ``error_message``, or text."""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    try:
        document = json.loads(body or "")
    except (TypeError, ValueError):
        return " ".join(str(body or "").split())[:300]
    if isinstance(document, dict):
        return str(document.get("message") or document.get("error_message") or "").strip()
    return ""


@contextmanager
def explaining(client: Any) -> Iterator[None]:
    """Turn the errors of calls on ``client`` into one-line KfpApiErrors naming the fix in its setting names."""
    host = getattr(client, "kfp_host", "") or "the KFP server"
    timeout = getattr(client, "request_timeout", DEFAULT_TIMEOUT_SECONDS)
    names = getattr(client, "setting_names", None) or SettingNames()
    with _explained(host, timeout, getattr(client, "kfp_namespace", ""), names):
        yield


def explained(client: Any, error: BaseException) -> BaseException:
    """``error`` as ``explaining`` would raise it: a KfpApiError for a server or connection error, else itself."""
    try:
        with explaining(client):
            raise error
    except BaseException as explanation:  # noqa: BLE001 - returned, not swallowed
        return explanation


def on_server(func: Callable) -> Callable:
    """Explain the errors of an operation on ``client`` (its first argument)."""

    @functools.wraps(func)
    def wrapper(client: Any, *args: Any, **kwargs: Any) -> Any:
        with explaining(client):
            return func(client, *args, **kwargs)

    return wrapper


# --- list helpers -------------------------------------------------------------------------------------------------


def name_filter(display_name: str) -> str:
    """A display-name equality filter, JSON as kfp.Client sends it."""
    return json.dumps({"predicates": [{"operation": _EQUALS, "key": "display_name", "stringValue": display_name}]})


def pages(fetch: Callable[[str], Any], items: str) -> Iterator[Any]:
    """Every item of a paginated list call; ``fetch(page_token)`` returns one page."""
    token = ""
    while True:
        page = fetch(token)
        yield from getattr(page, items) or []
        token = page.next_page_token or ""
        if not token:
            return


def normalised(value: Any) -> Any:
    """JSON through protobuf Struct turns every number into a double: compare numbers as floats."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {key: normalised(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [normalised(item) for item in value]
    return value
