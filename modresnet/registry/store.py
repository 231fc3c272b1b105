"""The registry: MLflow's Model Registry over `mlflow.MlflowClient`, embedded by default.

Where it is: `--registry URI`, else MLFLOW_TRACKING_URI, else SQLite at
`<storage root>/registry/mlflow.db` with artifacts in `<storage>/registry/artifacts` (a
folder, or s3://.../registry/artifacts for object storage): no server to start. One MLflow
run per version in the experiment "modresnet-registry" holds its artifacts: the checkpoint's
model.safetensors + model.json, nothing else, never a pickle. What a version records (scores,
lineage) is in its version tags; each alias move is one registered-model tag
`modresnet.history.<ns>`, the last HISTORY_KEPT of them kept (a registered-model tag holds at
most 5,000 characters on a SQL server, so one move per tag, its reason cut to 500).
MLflow is imported when a registry opens, so the CLI starts fast.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modresnet import names
from modresnet import storage as stores
from modresnet.errors import one_line
from modresnet.registry import gate as gates
from modresnet.registry.gate import GATE_TOLERANCE
from modresnet.registry.lineage import read_run
from modresnet.registry.refs import (
    CANDIDATE,
    CHAMPION,
    ModelRef,
    RegistryError,
    alias_name,
    is_ref,
    model_name,
    parse_ref,
    parse_spec,
    version_number,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

EXPERIMENT = "modresnet-registry"
ARTIFACT_DIR = "checkpoint"
HISTORY_KEPT = 100
REASON_MAX = 500
TAG = "modresnet."
HISTORY = TAG + "history."
LINEAGE_KEYS = ("run_uri", "config_hash", "config", "data_md5s", "search", "trial", "code_version")
SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")
COMPLETE = ".complete"
T = TypeVar("T")


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    aliases: tuple[str, ...]
    sha256: str
    val_acc: float | None
    test_acc: float | None
    test_md5: str | None
    test_n: int | None
    lineage: dict[str, Any]
    created: float
    source: str
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """What answers requests: the X-Model-Version header and the metrics' version label."""
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "label": self.label,
            "aliases": list(self.aliases),
            "sha256": self.sha256,
            "val_acc": self.val_acc,
            "test_acc": self.test_acc,
            "test_md5": self.test_md5,
            "test_n": self.test_n,
            "lineage": self.lineage,
            "created": self.created,
            "source": self.source,
            "notes": self.notes,
        }


def _quiet_mlflow() -> None:
    """MLflow's INFO lines and run URLs, alembic's migrations and progress bars stay off the
    user's terminal; an unreachable server fails in seconds, not after minutes of retries."""
    for var, value in (
        ("MLFLOW_LOGGING_LEVEL", "WARNING"),
        ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"),
        ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
    ):
        os.environ.setdefault(var, value)
    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)


def registry_location(
    uri: str | None, where: stores.Location | Path
) -> tuple[str, str | None, bool]:
    """(tracking URI, artifact location for the experiment or None for the server's own,
    embedded?) from --registry, MLFLOW_TRACKING_URI and the storage root."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if isinstance(where, stores.Location):
        artifacts = stores.Location(where.scheme, where.path).join("registry", "artifacts").uri
    else:
        artifacts = (where.expanduser().resolve() / "registry" / "artifacts").as_uri()
    if chosen is None:
        db = stores.local_root(where).expanduser().resolve() / "registry" / "mlflow.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}", artifacts, True
    scheme = chosen.split(":", 1)[0].lower() if ":" in chosen else ""
    return chosen, (None if scheme in SERVER_SCHEMES else artifacts), False


def open_registry(uri: str | None = None, storage: str | Path | None = None) -> Registry:
    """The registry at --registry URI / MLFLOW_TRACKING_URI, else the embedded one under the
    storage root (`--storage`, default modresnet.rundir.default_storage())."""
    from modresnet.rundir import default_storage

    where = stores.parse(storage) if storage is not None else None
    tracking, artifacts, embedded = registry_location(uri, where or default_storage())
    return Registry(tracking, artifacts, embedded)


class Registry:
    """Named, versioned checkpoints with aliases, a gate and an alias history."""

    def __init__(self, uri: str, artifact_location: str | None, embedded: bool) -> None:
        _quiet_mlflow()
        self.uri, self.artifact_location, self.embedded = uri, artifact_location, embedded
        self._client: MlflowClient = self._call(lambda: _client(uri))
        self._experiment: str | None = None

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    # --- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        out: list[str] = []
        token = None
        while True:
            with self._errors():
                page = self._client.search_registered_models(max_results=1000, page_token=token)
            out += [m.name for m in page]
            token = page.token
            if not token:
                return sorted(out)

    def versions(self, name: str) -> list[Version]:
        """Every version of `name`, newest first."""
        model = self._model(name)
        aliases = _aliases_by_version(model)
        found = self._search_versions(name)
        return sorted((self._version(mv, aliases) for mv in found), key=lambda v: -int(v.version))

    def get(self, ref: ModelRef | str) -> Version:
        """The version a reference names (`models:/NAME@ALIAS`, `/VERSION`, or bare NAME...)."""
        if isinstance(ref, str):
            ref = parse_ref(ref) if is_ref(ref) else parse_spec(ref)
        model = self._model(ref.name)
        aliases = _aliases_by_version(model)
        if ref.version is not None:
            version = version_number(ref.version)
        else:
            alias = alias_name(ref.alias or CHAMPION)
            held = dict(model.aliases).get(alias)
            if held is None:
                raise RegistryError(
                    f"model {ref.name} has no @{alias}; set it with `modresnet models alias "
                    f"{ref.name} VERSION {alias}` (`modresnet models show {ref.name}` lists them)"
                )
            version = str(held)
        return self._version(self._model_version(ref.name, version), aliases)

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every recorded alias move of `name`, oldest first: {alias, version, previous, at,
        reason} (version None: the alias was deleted; rollback: True for a rollback)."""
        tags = self._model(name).tags
        out = []
        for key in sorted(k for k in tags if k.startswith(HISTORY)):
            try:
                entry = json.loads(tags[key])
            except ValueError:
                continue
            if isinstance(entry, dict) and "alias" in entry:
                out.append(entry)
        return out

    # --- writing ---------------------------------------------------------------------------

    def register(self, run: str | Path, name: str) -> Version:
        """Record a finished run's best/ as the next version of `name` (created if new);
        refuses weights already registered under `name`, naming that version."""
        name = model_name(name)
        record = read_run(run)
        if self._exists(name):
            for v in self._search_versions(name):
                if v.tags.get(TAG + "sha256") == record.sha256:
                    raise RegistryError(
                        f"these weights (sha256 {record.sha256[:12]}...) are already "
                        f"registered as {name}/{v.version}; use models:/{name}/{v.version}"
                    )
        else:
            self._call(lambda: _create_model(self._client, name))
        run_id = self._upload(name, record.sha256, record.checkpoint)
        tags = {
            TAG + "sha256": record.sha256,
            TAG + "val_acc": "" if record.val_acc is None else repr(record.val_acc),
            TAG + "test_acc": repr(record.test_acc),
            TAG + "test_md5": record.test_md5,
            TAG + "test_n": str(record.test_n),
            TAG + "lineage": json.dumps(record.lineage, sort_keys=True),
        }
        with self._errors():
            source = f"{self._client.get_run(run_id).info.artifact_uri}/{ARTIFACT_DIR}"
            mv = self._client.create_model_version(name, source, run_id, tags=tags)
        return self._version(mv, _aliases_by_version(self._model(name)))

    def set_alias(
        self,
        name: str,
        version: str,
        alias: str,
        *,
        tolerance: float = GATE_TOLERANCE,
        reason: str = "",
    ) -> Version:
        """Point `alias` at `version` (`candidate` passes the gate first) and record the move."""
        alias = alias_name(alias)
        target = self.get(ModelRef(model_name(name), version=version_number(version)))
        if alias == CANDIDATE:
            self.gate(name, version, tolerance)
        previous = dict(self._model(name).aliases).get(alias)
        if previous is not None and str(previous) == target.version:
            return target
        self._call(lambda: self._client.set_registered_model_alias(name, alias, target.version))
        self._record(name, alias, target.version, previous, reason)
        return self.get(ModelRef(name, version=target.version))

    def delete_alias(self, name: str, alias: str, reason: str = "") -> None:
        alias = alias_name(alias)
        previous = dict(self._model(name).aliases).get(alias)
        if previous is None:
            return
        self._call(lambda: self._client.delete_registered_model_alias(name, alias))
        self._record(name, alias, None, previous, reason)

    def rollback(self, name: str, reason: str = "manual rollback") -> Version:
        """Champion back to the version that held it before the current one took it (an undo
        stack over the history: a second rollback goes one further back)."""
        current = self.get(ModelRef(model_name(name), alias=CHAMPION))
        target = _rollback_target(self.history(name), current.version)
        if target is None:
            raise RegistryError(
                f"{current.label} is the first champion recorded for {name}: nothing to roll "
                f"back to; set another with `modresnet models alias {name} VERSION champion`"
            )
        self.get(ModelRef(name, version=target))
        self._call(lambda: self._client.set_registered_model_alias(name, CHAMPION, target))
        self._record(name, CHAMPION, target, current.version, reason, rollback=True)
        return self.get(ModelRef(name, version=target))

    def gate(self, name: str, version: str, tolerance: float = GATE_TOLERANCE) -> Version | None:
        """The champion `version` was compared with (None: no champion yet); GateError when
        it was scored on another test set or is worse than the champion minus `tolerance`."""
        candidate = self.get(ModelRef(model_name(name), version=version_number(version)))
        held = dict(self._model(name).aliases).get(CHAMPION)
        champion = None if held is None else self.get(ModelRef(name, version=str(held)))
        gates.check(candidate, champion, tolerance)
        return champion

    def note(self, name: str, version: str, key: str, value: str) -> None:
        """A free-form version tag (a canary's outcome, say), shown by `models show`."""
        names.name(key, "note key")
        if key.startswith((TAG, "mlflow.")):
            raise RegistryError(f"note key {key!r}: the {TAG}* and mlflow.* tags are reserved")
        self.get(ModelRef(model_name(name), version=version_number(version)))
        self._call(lambda: self._client.set_model_version_tag(name, version, key, value))

    def fetch(self, v: Version) -> Path:
        """The version's checkpoint folder, downloaded once into $MODRESNET_CACHE/registry/
        <sha256>/ and its weights' sha256 checked against the registered one every time."""
        sha = names.sha256(v.sha256, f"{v.label}: sha256")
        root = stores.cache_root().parent / "registry"
        target = names.inside(root, root / sha, "registry cache entry")
        if not (target / COMPLETE).is_file():
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=sha[:12] + ".", suffix=".tmp", dir=root))
            try:
                self._download(v, tmp)
                (tmp / COMPLETE).write_text(v.source + "\n")
                try:
                    tmp.rename(target)
                except OSError:  # another process put the same entry there first
                    if not (target / COMPLETE).is_file():
                        raise RegistryError(
                            f"{target} exists and is not a complete registry cache entry; "
                            f"move it out of the way (or set MODRESNET_CACHE) and try again"
                        ) from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        _verify(v, target)
        return target

    # --- MLflow ----------------------------------------------------------------------------

    @contextmanager
    def _errors(self, artifacts: str | None = None) -> Iterator[None]:
        """MLflow's errors as one line; with `artifacts` (where they are), any error of the
        artifact store too (boto3, google-cloud, azure raise their own types)."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except RegistryError:
            raise
        except MlflowException as err:
            raise self._translate(err) from None
        except Exception as err:  # noqa: BLE001 - see above
            if artifacts is None and not isinstance(err, (OSError, ConnectionError)):
                raise
            if artifacts is None:
                raise self._unreachable(err) from None
            raise RegistryError(
                f"the registry's artifact store at {artifacts}: {one_line(err)[:400]}; check "
                f"that it exists and the credentials for it (AWS_*, GOOGLE_APPLICATION_"
                f"CREDENTIALS) are set"
            ) from None

    def _call(self, fn: Callable[[], T]) -> T:
        with self._errors():
            return fn()

    def _translate(self, err: Exception) -> RegistryError:
        text = one_line(err)
        if any(s in text for s in ("Max retries exceeded", "Connection refused", "timed out")):
            return self._unreachable(err)
        return RegistryError(f"the MLflow registry at {self.uri}: {text}")

    def _unreachable(self, err: Exception) -> RegistryError:
        return RegistryError(
            f"cannot reach the MLflow registry at {self.uri} ({one_line(err)[:300]}): start it "
            f"or fix --registry / MLFLOW_TRACKING_URI"
        )

    def _exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise self._translate(err) from None
        return True

    def _model(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        name = model_name(name)
        try:
            return self._client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(
                    f"no registered model {name!r} in the registry at {self.uri}; "
                    f"`modresnet models list` shows the names, `modresnet models register RUN "
                    f"--name {name}` creates it"
                ) from None
            raise self._translate(err) from None
        except (OSError, ConnectionError) as err:
            raise self._unreachable(err) from None

    def _model_version(self, name: str, version: str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_model_version(name, version)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(
                    f"model {name} has no version {version}; `modresnet models show {name}` "
                    f"lists its versions"
                ) from None
            raise self._translate(err) from None

    def _search_versions(self, name: str) -> list[ModelVersion]:
        name = model_name(name)  # checked: it goes into a filter string
        out: list[ModelVersion] = []
        token = None
        while True:
            with self._errors():
                page = self._client.search_model_versions(
                    f"name = '{name}'", max_results=1000, page_token=token
                )
            out += list(page)
            token = page.token
            if not token:
                return out

    def _experiment_id(self) -> str:
        if self._experiment is None:
            found = self._call(lambda: self._client.get_experiment_by_name(EXPERIMENT))
            if found is None:
                self._experiment = self._call(
                    lambda: self._client.create_experiment(
                        EXPERIMENT, artifact_location=self.artifact_location
                    )
                )
            else:
                if found.lifecycle_stage == "deleted":
                    self._call(lambda: self._client.restore_experiment(found.experiment_id))
                self._experiment = str(found.experiment_id)
        return self._experiment

    def _upload(self, name: str, sha: str, folder: Path) -> str:
        """One MLflow run holding the checkpoint's two files; its id."""
        experiment = self._experiment_id()
        run = self._call(
            lambda: self._client.create_run(
                experiment,
                run_name=f"{name}-{sha[:12]}",
                tags={TAG + "model": name, TAG + "sha256": sha},
            )
        )
        run_id = run.info.run_id
        from modresnet import checkpoint  # imports torch: only when weights move

        try:
            with self._errors(artifacts=run.info.artifact_uri):
                for f in (checkpoint.WEIGHTS, checkpoint.META):
                    self._client.log_artifact(run_id, str(folder / f), ARTIFACT_DIR)
        except RegistryError:
            self._call(lambda: self._client.set_terminated(run_id, "FAILED"))
            raise
        self._call(lambda: self._client.set_terminated(run_id))
        return str(run_id)

    def _download(self, v: Version, into: Path) -> None:
        import mlflow.artifacts

        from modresnet import checkpoint

        with self._errors(artifacts=v.source):
            for f in (checkpoint.WEIGHTS, checkpoint.META):
                got = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{v.source}/{f}", dst_path=str(into), tracking_uri=self.uri
                )
                if Path(got).resolve() != (into / f).resolve():
                    shutil.move(got, into / f)

    def _record(
        self,
        name: str,
        alias: str,
        version: str | None,
        previous: Any,
        reason: str,
        rollback: bool = False,
    ) -> None:
        entry: dict[str, Any] = {
            "alias": alias,
            "version": version,
            "previous": None if previous is None else str(previous),
            "at": time.time(),
            "reason": reason[:REASON_MAX],
        }
        if rollback:
            entry["rollback"] = True
        key = f"{HISTORY}{time.time_ns():020d}"
        self._call(lambda: self._client.set_registered_model_tag(name, key, json.dumps(entry)))
        kept = sorted(k for k in self._model(name).tags if k.startswith(HISTORY))
        with self._errors():
            for old in kept[:-HISTORY_KEPT]:
                self._client.delete_registered_model_tag(name, old)

    def _version(self, mv: ModelVersion, aliases: dict[str, list[str]]) -> Version:
        tags = dict(mv.tags or {})
        try:
            lineage = json.loads(tags.get(TAG + "lineage", "{}"))
        except ValueError:
            lineage = {}
        if not isinstance(lineage, dict):
            lineage = {}
        version = str(mv.version)
        return Version(
            name=mv.name,
            version=version,
            aliases=tuple(sorted(aliases.get(version, ()))),
            sha256=tags.get(TAG + "sha256", ""),
            val_acc=_float(tags.get(TAG + "val_acc")),
            test_acc=_float(tags.get(TAG + "test_acc")),
            test_md5=tags.get(TAG + "test_md5") or None,
            test_n=_int(tags.get(TAG + "test_n")),
            lineage={k: lineage.get(k) for k in LINEAGE_KEYS} | lineage,
            created=(mv.creation_timestamp or 0) / 1000,
            source=str(mv.source),
            notes={k: v for k, v in tags.items() if not k.startswith((TAG, "mlflow."))},
        )


def resolve_checkpoint(text: str, registry: str | None = None) -> tuple[Path, Version | None]:
    """A `models:/` reference -> (its fetched checkpoint folder, its Version); anything else ->
    (Path(text), None), for the caller's usual run-path handling."""
    if not is_ref(text):
        return Path(text), None
    ref = parse_ref(text)
    reg = open_registry(registry)
    version = reg.get(ref)
    return reg.fetch(version), version


def _client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _create_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _aliases_by_version(model: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for alias, version in dict(model.aliases or {}).items():
        out.setdefault(str(version), []).append(alias)
    return out


def _rollback_target(history: list[dict[str, Any]], current: str) -> str | None:
    """Replay the champion's moves as an undo stack; the version below the current one."""
    stack: list[str | None] = []
    for e in (e for e in history if e.get("alias") == CHAMPION):
        if not stack and e.get("previous") is not None:
            stack.append(e["previous"])
        if e.get("rollback"):
            while stack and stack[-1] != e.get("version"):
                stack.pop()
            if not stack:
                stack.append(e.get("version"))
        else:
            stack.append(e.get("version"))
    while stack and stack[-1] in (current, None):
        stack.pop()
    return stack[-1] if stack else None


def _verify(v: Version, folder: Path) -> None:
    from modresnet import checkpoint

    meta_sha = None
    try:
        meta_sha = json.loads((folder / checkpoint.META).read_text()).get("sha256")
        actual = checkpoint.sha256_file(folder / checkpoint.WEIGHTS)
    except (OSError, ValueError, AttributeError):
        actual = "unreadable"
    if actual != v.sha256 or meta_sha != v.sha256:
        raise RegistryError(
            f"{v.label}: the downloaded artifact in {folder} has sha256 {actual[:12]}... "
            f"where {v.sha256[:12]}... is registered; the artifact at {v.source} was changed "
            f"or damaged. Delete {folder} and register the run again"
        )


def _float(text: str | None) -> float | None:
    try:
        return None if not text else float(text)
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return None if not text else int(text)
    except ValueError:
        return None
