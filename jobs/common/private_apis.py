"""Every private MLflow, Ray and PyTorch API the jobs use, in one place.

Each one is reached through a function here, never imported elsewhere, so that an upgrade
that removes or renames one breaks here (and in `tests/unit/common/test_private_apis.py`,
which names the API and its users) rather than deep inside a job. For each, `PRIVATE_APIS`
records who uses it and the public alternative checked in the installed sources (MLflow 3.17,
Ray 2.60, PyTorch 2.13) and why it does not serve. Logger *names* such as ``ray._private.authentication...``
(`jobs.common.logs.RAY_NOTICES`) are strings, not imports, and are not listed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PrivateApi:
    """One private attribute of a third-party module that the jobs rely on."""

    module: str
    """Importable module that holds it (``ray.experimental.internal_kv``)."""
    attribute: str
    """Attribute of that module (``_internal_kv_get``)."""
    used_by: str
    """Where the jobs use it (through this module)."""
    public_alternative: str
    """The public API checked instead, and why it does not serve."""

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.attribute}"


class PrivateApiError(ImportError):
    """A private API the jobs use is gone or renamed (a Ray or MLflow upgrade)."""


PARSE_MODEL_URI = PrivateApi(
    "mlflow.store.artifact.utils.models",
    "_parse_model_uri",
    "jobs/common/model_source.py (resolve_model, the logged model behind a version)",
    "mlflow.store.artifact.utils.models.get_model_name_and_version(client, uri) is the public "
    "entry, but it resolves as it parses: a stage or 'latest' silently becomes today's latest "
    "version (we refuse those before any lookup) and an alias comes back without its name.",
)
INTERNAL_KV_GET = PrivateApi(
    "ray.experimental.internal_kv",
    "_internal_kv_get",
    "jobs/common/cluster_info.py (autoscaler v1 status, GCS key __autoscaling_status)",
    "ray.autoscaler.v2.sdk.get_cluster_status answers for autoscaler v2 only (used there); "
    "no public API reads the v1 monitor's status, which `ray status` itself reads from the "
    "GCS key-value store.",
)
READONLY_NODE_TYPE = PrivateApi(
    "ray.autoscaler._private.util",
    "format_readonly_node_type",
    "jobs/common/cluster_info.py (runs_an_autoscaler: hand-joined nodes vs node types)",
    "none: the node type name Ray's read-only provider gives a hand-joined node is defined "
    "only here; copying its format ('node_<id>') would drift silently if Ray changed it.",
)
CLUSTER_STATE = PrivateApi(
    "ray._private.state",
    "state",
    "jobs/common/cluster_info.py (max resources from the cluster config)",
    "ray.cluster_resources() is the cluster now, not what the autoscaler may grow to, and "
    "ray.autoscaler.v2.sdk.get_cluster_status reports nodes and demands, not node groups' "
    "max counts; Ray Train and Ray Data read the same state.get_max_resources_from_cluster_"
    "config() for their own limits.",
)
WORKER_HOOK_VAR = PrivateApi(
    "ray._private.ray_constants",
    "WORKER_PROCESS_SETUP_HOOK_ENV_VAR",
    "jobs/common/logs.py (ray_init_options: does the job bring a worker setup hook?)",
    "ray.init(runtime_env={'worker_process_setup_hook': ...}) is public, but whether a job "
    "already brings a hook (Ray refuses two) is visible only through this variable's name.",
)
DEDUP_SKIP_REGEX = PrivateApi(
    "ray._private.ray_constants",
    "RAY_DEDUP_LOGS_SKIP_REGEX",
    "jobs/common/logs.py (drop_forwarded_notices: keep the user's own skip pattern)",
    "the environment variable of that name is the public knob, but Ray reads it once at "
    "`import ray` (and a test may set it later): the value Ray holds is the one in force.",
)
STDOUT_DEDUPLICATOR = PrivateApi(
    "ray._private.ray_logging",
    "stdout_deduplicator",
    "jobs/common/logs.py (drop_forwarded_notices: lines workers forward to the driver)",
    "RAY_DEDUP_LOGS_SKIP_REGEX is the public knob, but Ray reads it at `import ray`, before a "
    "job knows its --log-level; only the deduplicators see the lines workers forward.",
)
STDERR_DEDUPLICATOR = PrivateApi(
    "ray._private.ray_logging",
    "stderr_deduplicator",
    "jobs/common/logs.py (drop_forwarded_notices: lines workers forward to the driver)",
    "as for stdout_deduplicator.",
)

SHAPE_CONFIG = PrivateApi(
    "torch.fx.experimental._config",
    "patch",
    "jobs/exporting/formats.py (export_program: backed_size_oblivious while torch.export traces)",
    "torch.export's Dim(min=1) and torch._check are public, but a dynamic side that can be 1 "
    "still gets specialised guards (a one-pixel bottleneck); only the shape environment's "
    "backed_size_oblivious setting traces one graph for every size, 1 x 1 included.",
)

PRIVATE_APIS = (
    PARSE_MODEL_URI,
    INTERNAL_KV_GET,
    READONLY_NODE_TYPE,
    CLUSTER_STATE,
    WORKER_HOOK_VAR,
    DEDUP_SKIP_REGEX,
    STDOUT_DEDUPLICATOR,
    STDERR_DEDUPLICATOR,
    SHAPE_CONFIG,
)


def resolve(api: PrivateApi) -> Any:
    """The attribute itself; `PrivateApiError` naming it and its users when it is gone."""
    try:
        return getattr(importlib.import_module(api.module), api.attribute)
    except (ImportError, AttributeError) as exc:
        raise PrivateApiError(
            f"private API {api.qualname} (used by {api.used_by}) is gone in the installed "
            f"version ({exc}); adapt jobs/common/private_apis.py ({api.public_alternative})"
        ) from exc


# --- MLflow -----------------------------------------------------------------------------------


def parse_model_uri(uri: str) -> Any:
    """MLflow's own parse of a ``models:/`` URI: a ``ParsedModelUri`` (model_id, name, version,
    stage, alias); raises ``MlflowException`` for a malformed one."""
    return resolve(PARSE_MODEL_URI)(uri)


# --- Ray ---------------------------------------------------------------------------------------


def gcs_kv_get(key: str) -> bytes | None:
    """A value of the GCS key-value store (default namespace) of the connected Ray."""
    return resolve(INTERNAL_KV_GET)(key)


def readonly_node_type(node_id: str) -> str:
    """The node type Ray's read-only provider gives a node that joined by hand."""
    return resolve(READONLY_NODE_TYPE)(node_id)


def max_resources_from_cluster_config() -> dict[str, int] | None:
    """Most of each resource the cluster config allows, or None when none is published."""
    return resolve(CLUSTER_STATE).get_max_resources_from_cluster_config()


def worker_setup_hook_env_var() -> str:
    """The environment variable through which Ray passes a job's worker setup hook."""
    return resolve(WORKER_HOOK_VAR)


def dedup_skip_regex() -> str | None:
    """The user's RAY_DEDUP_LOGS_SKIP_REGEX as Ray holds it (read at `import ray`)."""
    return resolve(DEDUP_SKIP_REGEX)


def log_deduplicators() -> tuple[Any, Any]:
    """Ray's deduplicators of the stdout and stderr lines workers forward to the driver."""
    return resolve(STDOUT_DEDUPLICATOR), resolve(STDERR_DEDUPLICATOR)


# --- PyTorch ----------------------------------------------------------------------------------


def size_oblivious_tracing() -> Any:
    """A context in which torch.export treats every dynamic size as possibly 1 (one graph for
    every size): the shape environment's ``backed_size_oblivious`` setting."""
    return resolve(SHAPE_CONFIG)(backed_size_oblivious=True)
