"""The private MLflow and Ray APIs the jobs use (`jobs.common.private_apis`) still exist, with
the shape the jobs rely on: an upgrade that removes or renames one fails here, naming it and
the code that uses it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from jobs.common import private_apis
from jobs.common.private_apis import PRIVATE_APIS, PrivateApi, PrivateApiError
from tests.support import REPO_ROOT


@pytest.mark.parametrize("api", PRIVATE_APIS, ids=lambda api: api.qualname)
def test_each_private_api_is_still_there(api: PrivateApi):
    try:
        private_apis.resolve(api)
    except PrivateApiError as exc:
        pytest.fail(str(exc))
    assert api.used_by and api.public_alternative  # each says where and why


def test_a_missing_private_api_names_itself_and_its_users():
    gone = PrivateApi("ray.experimental.internal_kv", "_renamed_away", "jobs/x.py (f)", "none")
    with pytest.raises(PrivateApiError) as info:
        private_apis.resolve(gone)
    message = str(info.value)
    assert "ray.experimental.internal_kv._renamed_away" in message and "jobs/x.py (f)" in message


def _params(api: PrivateApi) -> list[str]:
    return list(inspect.signature(private_apis.resolve(api)).parameters)


def test_the_private_apis_have_the_shape_the_jobs_use():
    # MLflow: the parse of every models:/ form the jobs accept or refuse.
    parsed = private_apis.parse_model_uri("models:/unet@champion")
    assert (parsed.name, parsed.alias, parsed.version) == ("unet", "champion", None)
    assert private_apis.parse_model_uri("models:/unet/3").version == "3"
    assert private_apis.parse_model_uri("models:/m-abc").model_id == "m-abc"
    assert private_apis.parse_model_uri("models:/unet/Production").stage == "Production"
    # Ray: called with a key alone; the read-only provider's node type format.
    assert _params(private_apis.INTERNAL_KV_GET)[0] == "key"
    assert private_apis.readonly_node_type("abc") == "node_abc"
    assert callable(
        private_apis.resolve(private_apis.CLUSTER_STATE).get_max_resources_from_cluster_config
    )
    assert private_apis.worker_setup_hook_env_var().isidentifier()
    assert private_apis.dedup_skip_regex() is None or isinstance(
        private_apis.dedup_skip_regex(), str
    )
    for dedup in private_apis.log_deduplicators():
        assert hasattr(dedup, "skip_re") and callable(dedup.deduplicate)
    # PyTorch: the setting exists and the patch sets it only inside the context.
    import torch.fx.experimental._config as shape_config

    before = shape_config.backed_size_oblivious
    with private_apis.size_oblivious_tracing():
        assert shape_config.backed_size_oblivious is True
    assert shape_config.backed_size_oblivious == before


def private_imports(path: Path) -> list[str]:
    """Imports in ``path`` of a Ray, MLflow or PyTorch module or name that starts with an
    underscore."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in ("ray", "mlflow", "torch") and any(p.startswith("_") for p in parts):
                found.append(f"{path.relative_to(REPO_ROOT).as_posix()}:{node.lineno} {name}")
    return found


def test_no_job_imports_a_private_api_but_private_apis_itself():
    offenders = [
        found
        for path in sorted(Path(REPO_ROOT, "jobs").rglob("*.py"))
        if path.name != "private_apis.py"
        for found in private_imports(path)
    ]
    assert not offenders, f"reach private APIs through jobs/common/private_apis.py: {offenders}"
