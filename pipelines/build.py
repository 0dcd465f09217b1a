"""`fgid build INPUT OUT`: photos -> FGID WebDataset shards + Parquet index, on Ray Data.

Flow (DESIGN.md, "Pipeline properties"):
1. plan: list INPUT sorted, hash every file in parallel, drop byte-identical copies (index rows
   with reason `duplicate`), cut the unique images into shards of `--shard-size` images, and fix
   all that in `OUT/plan.parquet`; a resumed run reads the plan instead of making a new one.
   A new plan is hashed in a thread while Ray starts (a resume starts Ray only if shards are
   left to do);
2. Ray Data: the images of uncommitted shards stream through the stages (pipelines.ray_stages:
   decode+detect+align -> parse -> embed -> caption -> encode), actor pools with models loaded
   inside the workers; a failure on one image or face is a row with a reason, never a lost block;
3. the Ray dataset has one row per shard: the pool that encodes writes and commits each shard
   itself (fgid_builder.dataset: tar, then its index part, then the stats JSON, the commit
   record, last) into OUT, a local folder or any fsspec URL (s3://, gs://); the driver
   receives only the commit records (counts and keys, never sample bytes);
4. merge the index parts and the planning rejects into `OUT/index.parquet` (after Ray has
   stopped);
5. write the QA report `OUT/report/index.html` (eval.report; `--no-report` skips it). The
   report is a view of the dataset, rebuilt from scratch by every run: if it fails, the error
   is logged (`OUT/logs/report_error.txt`) and printed, the dataset is kept as committed, and
   the exit code is 0, or 1 under `--strict`.

Everything under OUT except `OUT/logs/` and `OUT/report/` is byte-deterministic: the same
inputs, settings and model versions give the same bytes whatever `--workers`, `--address`,
interruptions, or where INPUT, `--models-dir` and the installed packages lie: no absolute path
is recorded there (uris are relative to INPUT, `pkg://PACKAGE/FILE` for the `--demo` photos;
`build.json` records the kind of input, not its path, and the models by name, version and
SHA-256, not by folder). Where this run read them is in `OUT/logs/run.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from fgid_builder.dataset import INDEX, LOGS, PARTS, PLAN, SETTINGS, SHARDS, Dataset, is_local
from fgid_builder.fetch import (
    DEFAULT_PER_HOST,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    FetchPolicy,
    is_url,
)
from fgid_builder.io import DEFAULT_MAX_ENTRIES, DEFAULT_MAX_INPUT_BYTES, DEFAULT_READ_TIMEOUT
from fgid_builder.lock import LockHeld
from fgid_builder.manifest import ManifestError
from fgid_builder.schema import SCHEMA_VERSION, ModelFileError
from fgid_builder.settings import BackendSettings
from fgid_builder.stage_resources import FLAG_NAMES, StageResources
from pipelines.options import (
    backend_option,
    click_options,
    max_faces_option,
    min_face_option,
    models_dir_option,
    resources_from_click_kwargs,
    shard_size_option,
)

log = logging.getLogger("fgid.build")

RAY_LOG = "ray.log"  # under LOGS: Ray's own messages, unless --verbose

__all__ = ["INDEX", "LOGS", "PARTS", "PLAN", "SETTINGS", "SHARDS", "BuildConfig", "run_build"]


PLAN_ON = ("auto", "driver", "cluster")


class BuildError(Exception):
    """A problem with the build as asked (not with one image): one line, exit code 2."""


# `fgid build` exit codes (the --help epilog and the README list them)
EXIT_OK, EXIT_REJECTS, EXIT_REFUSED, EXIT_FAILED = 0, 1, 2, 3
EXIT_CODES_HELP = (
    "\b\nExit codes:\n"
    "  0  the dataset is complete\n"
    "  1  --strict, and some input or face was rejected (or the QA report failed)\n"
    "  2  usage error or refused: bad option, missing weights, OUT in use by another run,\n"
    "     OUT built with other settings, INPUT missing or over --max-entries\n"
    "  3  the run failed: I/O (read-only or full OUT, ...), Ray (a raylet or worker died,\n"
    "     the cluster did not start); the cause on one line, the traceback in\n"
    "     OUT/logs/error.txt when OUT is writable; rerun to resume"
)


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and first line (an OSError with errno name, cause
    and file)."""
    if isinstance(e, OSError) and e.strerror:
        import errno as errno_names

        name = errno_names.errorcode.get(e.errno or 0, "")
        where = f": {e.filename}" if e.filename is not None else ""
        return f"{type(e).__name__} [{name}] {e.strerror}{where}"
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


@dataclass
class BuildConfig(BackendSettings):
    """Every `fgid build` option, one field each (`fgid build --help` is the reference); the
    backends and face gates are `fgid_builder.settings.BackendSettings`, shared with
    `fgid stage`."""

    input: str | None
    out: str
    workers: int = 0  # 0 = the number of CPUs of this machine (local) or of the cluster
    address: str | None = None
    shard_size: int = 1000
    strict: bool = False
    demo: bool = False
    batch_size: int = 4
    fuse: bool = True
    # shorthand for `resources` (the only one for the encode stage); folded into it
    concurrency: dict[str, int] = field(default_factory=dict)
    gpus: dict[str, float] = field(default_factory=dict)
    progress: bool = True
    verbose: bool = False  # Ray's own messages on the terminal, not in OUT/logs/ray.log
    report: bool = True  # write OUT/report/ (the QA report) at the end
    # input safety (fgid_builder.io, pipelines.plan): bytes read per input, seconds per read,
    # symlinks out of INPUT, folder entries one listing visits
    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    read_timeout: float = DEFAULT_READ_TIMEOUT
    follow_external_symlinks: bool = False
    max_entries: int = DEFAULT_MAX_ENTRIES
    # downloads (fgid_builder.fetch): http(s) URLs; --max-input-bytes caps them too
    fetch_timeout: float = DEFAULT_TIMEOUT
    fetch_retries: int = DEFAULT_RETRIES
    per_host: int = DEFAULT_PER_HOST
    robots: bool = True  # honour X-Robots-Tag noai/noimageai (rejects with `opted_out`)
    # a rerun whose INPUT lists new inputs: plan them into new shards after the existing ones
    # (without it, inputs that differ from OUT's plan are refused, exit 2)
    append: bool = False
    # where a new plan hashes (and downloads) its inputs: "driver" (threads here, while Ray
    # starts), "cluster" (Ray tasks), "auto" (the cluster when joining one with --address)
    plan_on: str = "auto"
    # opt-out lists (fgid_builder.optout); OUT/optout.txt is always read too. Not a setting
    # of build.json: a list that grows (fgid erase) must not refuse the resume.
    exclude: tuple[str, ...] = ()
    # per stage: batch size, actors, GPUs/CPUs per actor, backend options (`--stage-config`
    # YAML + `--{detector,parser,embedder,captioner}-{option,batch-size,gpus,concurrency}`)
    resources: StageResources = field(default_factory=StageResources)
    exclusions: Any = field(default=None, repr=False)  # loaded from `exclude` by run_build

    def __post_init__(self) -> None:
        if self.demo and self.input:
            raise BuildError("--demo takes only OUT (its inputs are the package-shipped photos)")
        if not self.demo and not self.input:
            raise BuildError("INPUT is required (or pass --demo)")
        if self.workers < 0:
            raise BuildError("--workers must be >= 0")
        if self.shard_size < 1:
            raise BuildError("--shard-size must be >= 1")
        if self.batch_size < 1:
            raise BuildError("--batch-size must be >= 1")
        for error in self.settings_errors():
            raise BuildError(error)
        if self.max_input_bytes < 1:
            raise BuildError("--max-input-bytes must be >= 1")
        if not self.read_timeout > 0:
            raise BuildError("--read-timeout must be > 0")
        if self.max_entries < 1:
            raise BuildError("--max-entries must be >= 1")
        if self.plan_on not in PLAN_ON:
            raise BuildError(f"--plan-on must be one of {', '.join(PLAN_ON)}")
        try:
            self.fetch_policy()
        except ValueError as e:
            raise BuildError(
                f"--fetch-timeout must be > 0, --fetch-retries >= 0, --per-host >= 1 ({e})"
            ) from None
        from pipelines.ray_stages import STAGE_NAMES

        for opt, mapping in (("--concurrency", self.concurrency), ("--gpus", self.gpus)):
            for stage, value in mapping.items():
                if stage not in STAGE_NAMES:
                    raise BuildError(
                        f"{opt}: unknown stage {stage!r}; stages are {', '.join(STAGE_NAMES)}"
                    )
                if value < 0 or (opt == "--concurrency" and value < 1):
                    raise BuildError(f"{opt} {stage}={value}: must be positive")
        self.resources = _fold_shorthand(self.resources, self.concurrency, self.gpus)

    def input_kind(self) -> str:
        """What build.json records of INPUT: its kind, never its path."""
        from fgid_builder.manifest import is_manifest

        if self.demo:
            return "--demo"
        if is_manifest(str(self.input)):
            return "manifest"
        from pipelines.plan import is_folder

        return "folder" if is_folder(str(self.input)) else "list file"

    def plans_on_cluster(self) -> bool:
        return self.plan_on == "cluster" or (self.plan_on == "auto" and bool(self.address))

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            timeout=self.fetch_timeout,
            retries=self.fetch_retries,
            per_host=self.per_host,
            max_bytes=self.max_input_bytes,
            read_timeout=self.read_timeout,
            honour_robots=self.robots,
        )

    def input_base(self) -> str | None:
        """The folder the plan's paths are relative to (None for --demo: pkg:// paths)."""
        from pipelines.plan import input_base

        return None if self.demo else input_base(self.input)

    def backend_options(self) -> dict[str, dict[str, Any]]:
        """stage -> the backend's constructor options (empty when none were given)."""
        return {stage: self.resources.backend_options(stage) for stage in self.backends()}

    def output_settings(self, models: dict[str, Any] | None = None) -> dict[str, Any]:
        """What decides the output bytes (`OUT/build.json`); a resume must match it.

        `models` (stage -> name, version, weights SHA-256) pins the weights too."""
        return {
            "models": models,
            "schema_version": SCHEMA_VERSION,
            "input": self.input_kind(),
            "shard_size": self.shard_size,
            "backends": self.backends(),
            "backend_options": self.backend_options(),
            "min_face": self.min_face,
            "max_faces": self.max_faces,
            "max_input_bytes": self.max_input_bytes,
            "follow_external_symlinks": self.follow_external_symlinks,
        }


def _fold_shorthand(
    resources: StageResources, concurrency: dict[str, int], gpus: dict[str, float]
) -> StageResources:
    """`--concurrency STAGE=N` / `--gpus STAGE=F` into the per-stage resources; the same stage
    given two different values (`--gpus embed=1 --embedder-gpus 0.5`) is an error."""
    for opt, key, mapping in (
        ("--concurrency", "concurrency", concurrency),
        ("--gpus", "num_gpus", gpus),
    ):
        for stage, value in mapping.items():
            have = getattr(resources[stage], key)
            if have not in (None, 0, 0.0) and have != value:
                flag = FLAG_NAMES[stage]
                raise BuildError(
                    f"{opt} {stage}={value} contradicts {key}={have} "
                    f"(--{flag}-{'gpus' if key == 'num_gpus' else 'concurrency'} or "
                    "--stage-config); give one"
                )
    try:
        return resources.merged(StageResources.from_cli(concurrency=concurrency, gpus=gpus))
    except ValueError as e:
        raise BuildError(str(e)) from None


@dataclass
class BuildSummary:
    """What a run did; printed at the end and written to `OUT/logs/summary.json`."""

    images_listed: int = 0
    images_planned: int = 0
    images_read: int = 0  # processed by this run (not skipped as already committed)
    shards_total: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    samples: int = 0  # in the whole dataset
    samples_written: int = 0  # by this run
    rejects: dict[str, int] = field(default_factory=dict)  # reason -> rows, whole dataset
    temp_files_removed: int = 0
    seconds_plan: float = 0.0  # checking models, listing, hashing, writing the plan
    seconds_ray_start: float = 0.0
    planned_while_ray_started: bool = False  # a new plan is hashed while Ray starts
    seconds_process: float = 0.0  # from Ray up and the plan made to the last shard committed
    seconds_ray_stop: float = 0.0  # ray.shutdown, before the index merge and the report
    seconds_total: float = 0.0
    workers: int = 0
    images_per_second: float = 0.0
    seconds_first_result: float = 0.0  # from the start of processing (actors starting up)
    steady_images_per_second: float = 0.0  # from the first result to the last
    worker_seconds: float = 0.0  # time the actors spent in stage code
    worker_utilisation: float = 0.0  # worker_seconds / (workers x seconds_process)
    report: str | None = None  # OUT/report/index.html when written
    report_error: str | None = None  # one line when writing the report failed
    seconds_report: float = 0.0

    def lines(self) -> list[str]:
        rejects = ", ".join(f"{k} {v}" for k, v in sorted(self.rejects.items())) or "none"
        lines = [
            f"images listed {self.images_listed}, unique {self.images_planned}, "
            f"read this run {self.images_read}",
            f"faces written {self.samples_written} this run, {self.samples} in the dataset",
            f"shards {self.shards_total} ({self.shards_written} written, "
            f"{self.shards_skipped} already committed)",
            f"rejects: {rejects}",
            f"{self.images_per_second:.2f} images/s with {self.workers} workers "
            f"({self.seconds_process:.1f} s processing; {self.seconds_plan:.1f} s planning"
            f"{' while Ray started' if self.planned_while_ray_started else ''}, "
            f"{self.seconds_ray_start:.1f} s starting Ray, {self.seconds_ray_stop:.1f} s "
            f"stopping it; {self.seconds_total:.1f} s in all)",
        ]
        if self.report:
            lines.append(f"report: {self.report}")
        if self.report_error:
            lines.append(f"report FAILED (the dataset is complete): {self.report_error}")
        return lines


# --------------------------------------------------------------------------- the run


def check_models(cfg: BuildConfig) -> dict[str, Any]:
    """Every backend's model info, before any worker starts: a missing weight file is a
    ModelFileError (exit 2) now, not an actor failure later. Cheap: nothing is loaded."""
    from fgid_builder import registry

    infos: dict[str, Any] = {}
    options = cfg.backend_options()
    for stage, name in cfg.backends().items():
        try:
            cls = registry.backend_class(stage, name)
        except ImportError as e:
            raise BuildError(f"{stage} backend {name!r} cannot be imported: {e}") from None
        try:
            backend = cls(models_dir=cfg.models_dir, **options[stage])
        except (TypeError, ValueError) as e:
            if not options[stage]:
                raise
            raise BuildError(
                f"--{FLAG_NAMES[stage]}-option {_kv(options[stage])} for {stage} backend "
                f"{name!r}: {e}"
            ) from None
        infos[stage] = backend.model_info().to_json()
    return infos


def _load_exclusions(cfg: BuildConfig, out: Dataset, models: dict[str, Any]) -> Any:
    """`--exclude` lists + OUT/optout.txt (None when both are empty)."""
    from fgid_builder.optout import OPTOUT, optout_bytes
    from pipelines.optout_hooks import load_exclusions

    embedder = ((models or {}).get("embed") or {}).get("name", "")
    try:
        excl = load_exclusions(cfg.exclude, out.url, models_dir=cfg.models_dir, embedder=embedder)
    except (OSError, ValueError) as e:
        raise BuildError(f"--exclude: {e}") from None
    if excl is not None and (excl.listed.sha256 or excl.listed.keys):
        # the dataset keeps the hashes it was built without: a resume or rebuild keeps them out
        data = optout_bytes(excl.listed)
        if not out.is_file(OPTOUT) or out.read_bytes(OPTOUT) != data:
            out.write_bytes(OPTOUT, data)
    return excl


def _kv(options: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items())


def _dataset(cfg: BuildConfig) -> Dataset:
    """OUT as a dataset (a local folder or any fsspec URL)."""
    try:
        return Dataset(cfg.out)
    except (ImportError, ValueError) as e:
        raise BuildError(str(e)) from None


def _prepare_out(cfg: BuildConfig, models: dict[str, Any]) -> tuple[Dataset, int]:
    """Create OUT's folders, remove what a killed run left half-written, check settings."""
    out = _dataset(cfg)
    removed = out.prepare()
    if removed:
        log.info("removed %d temporary files left by an interrupted run", removed)
    wanted = cfg.output_settings(models)
    settings = json.dumps(wanted, indent=1, sort_keys=True).encode() + b"\n"
    if out.is_file(SETTINGS):
        if out.read_bytes(SETTINGS) != settings:
            old = json.loads(out.read_bytes(SETTINGS))
            diff = sorted(k for k, v in wanted.items() if old.get(k) != v)
            raise BuildError(
                f"{cfg.out} holds a build made with other settings ({', '.join(diff)}); "
                "use a new OUT folder or the same settings"
            )
    else:
        out.write_bytes(SETTINGS, settings)
    _record_run_paths(cfg, out)
    return out, removed


def _where(location: str) -> str:
    """A location as this run saw it: local paths absolute, URLs as given."""
    return os.path.abspath(location) if is_local(location) else location


def _record_run_paths(cfg: BuildConfig, out: Dataset) -> None:
    """Where this run read its inputs and models (machine-specific, so under logs/); a resume
    from another location is allowed (the plan's content hashes guard it) and logged."""
    run = {
        "input": None if cfg.demo else _where(str(cfg.input)),
        "input_base": cfg.input_base(),
        "models_dir": None if cfg.models_dir is None else os.path.abspath(cfg.models_dir),
    }
    path = f"{LOGS}/run.json"
    if out.is_file(path):
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(out.read_bytes(path))
            moved = sorted(k for k, v in run.items() if old.get(k) != v)
            if moved:
                log.info("resuming with other locations than the last run: %s", ", ".join(moved))
    out.write_text(path, json.dumps(run, indent=1, sort_keys=True) + "\n")


def _demo_listing() -> list[Any]:
    """The package-shipped photos as listed inputs named `pkg://PACKAGE/FILE`, by uri."""
    from fgid_builder.demo import demo_photos
    from pipelines.plan import Listed, package_uri

    listed = []
    for photo in demo_photos():
        photo = Path(os.path.abspath(photo))
        for parent in photo.parents:
            if not parent.name.isidentifier():
                continue
            try:
                uri = package_uri(photo, parent.name)
            except (FileNotFoundError, ValueError, ImportError):
                continue
            listed.append(Listed(uri, str(photo)))
            break
        else:
            raise BuildError(f"{photo} lies in no installed package")
    return sorted(listed, key=lambda item: item.uri)


class _Listing:
    """INPUT's listing, iterated once: `first` (a folder or list file: everything; a manifest:
    its first batch, read here so a bad manifest fails early with exit 2) then the rest of a
    manifest, streamed into the plan batch by batch, never held whole."""

    def __init__(self, first: list[Any], rest: Iterator[Any] | None = None):
        self.first = first
        self.rest = rest if rest is not None else iter(())

    def __iter__(self) -> Iterator[Any]:
        yield from self.first
        yield from self.rest


def _list_for_plan(cfg: BuildConfig) -> _Listing:
    import itertools

    from fgid_builder.manifest import ManifestError, is_manifest
    from pipelines.plan import LISTING_BATCH, ListingError, iter_inputs, list_inputs

    try:
        if cfg.demo:
            return _Listing(_demo_listing())
        if is_manifest(str(cfg.input)):
            it = iter_inputs(cfg.input)
            return _Listing(list(itertools.islice(it, LISTING_BATCH)), it)
        return _Listing(
            list_inputs(
                cfg.input,
                follow_external_symlinks=cfg.follow_external_symlinks,
                max_entries=cfg.max_entries,
            )
        )
    except (FileNotFoundError, ListingError, ManifestError) as e:
        raise BuildError(str(e)) from None


def _make_plan(
    cfg: BuildConfig,
    out: Dataset,
    listed: Any,
    threads: int,
    after: Any = None,
    workers: int = 0,
):
    """Hash the listed inputs and write OUT/plan.parquet. On the driver this runs in a thread
    while Ray starts (no Ray calls; pipelines.plan was imported by the listing); `workers`
    (> 0, Ray started, this thread) hashes on the cluster instead. `after`: the plan that
    `--append` extends."""
    from pipelines.plan import make_plan, plan_bytes

    hasher = None
    if workers:
        from pipelines.ray_stages import hash_on_ray

        hasher = hash_on_ray(cfg.fetch_policy(), workers=workers)
    plan = make_plan(
        listed,
        shard_size=cfg.shard_size,
        threads=threads,
        base=cfg.input_base(),
        max_bytes=cfg.max_input_bytes,
        timeout=cfg.read_timeout,
        fetch=cfg.fetch_policy(),
        after=after,
        hasher=hasher,
    )
    if cfg.exclusions is not None:
        from pipelines.optout_hooks import opt_out_plan

        plan = opt_out_plan(plan, cfg.exclusions)
    out.write_bytes(PLAN, plan_bytes(plan))
    return plan


def _merge_final_index(out: Dataset, plan, shards: Sequence[str]) -> Any:
    """Merge the shards' index parts and the planning rejects into OUT/index.parquet, streaming
    (memory bounded by the merge's fan-in, not by the rows); returns its status and reason
    columns."""
    from pipelines.plan import plan_reject_rows

    return out.merge_index(shards, plan_reject_rows(plan))


@contextlib.contextmanager
def _ray_session(cfg: BuildConfig) -> Iterator[int]:
    """Start (or join) Ray quietly; yields the number of CPU workers to use.

    Unless --verbose, Ray's own output goes to OUT/logs/ray.log (see `_ray_output_to`)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    started = False
    with contextlib.ExitStack() as stack:
        if not cfg.verbose:
            stack.enter_context(_ray_output_to(_local_logs(cfg.out) / RAY_LOG))
        if not ray.is_initialized():
            common: dict[str, Any] = {
                "include_dashboard": False,
                # keeps the `ray` logger's handlers (quiet: the file `_ray_output_to` gave it);
                # configure_logging=False would remove them
                "configure_logging": True,
                "logging_level": logging.INFO,
                # --verbose also streams the workers' own stdout/stderr to the terminal
                "log_to_driver": cfg.verbose,
            }
            if cfg.address:
                try:
                    ray.init(address=cfg.address, **common)
                except (ConnectionError, ray.exceptions.RayError) as e:
                    hint = ""
                    if os.environ.get("RAY_AUTH_MODE") != "token":
                        hint = " (a cluster with token authentication needs RAY_AUTH_MODE=token)"
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise BuildError(
                        f"cannot join the Ray cluster at {cfg.address}: {first}{hint}"
                    ) from None
            else:
                ray.init(address="local", num_cpus=cfg.workers or os.cpu_count() or 1, **common)
            started = True
        try:
            workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            yield workers
        finally:
            if started:
                ray.shutdown()


def _local_logs(out: str) -> Path:
    """Where this machine's own log files go: OUT/logs/ for a local OUT; for an OUT on an
    object store a local folder named after it (Ray writes its messages as they come)."""
    if is_local(out):
        path = Path(out.removeprefix("file://")) / LOGS
    else:
        import hashlib
        import tempfile

        tag = hashlib.sha256(out.encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"fgid-logs-{tag}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _ray_output_to(path: Path) -> Iterator[None]:
    """Ray's own output goes to `path` while Ray runs; fgid's stays on the terminal.

    Ray's is: its `ray.*` loggers (the token-authentication banner, Ray Data's execution
    lines), the Python warnings its modules raise, and what its C++ core worker in this process
    writes straight to file descriptor 2 (`core_worker.cc ... max_restarts > 0`). No Ray option
    moves the last, so fd 2 itself points at `path` and, when sys.stderr is fd 2, sys.stderr
    (progress bars, fgid's log lines, errors) moves to a copy of the terminal's descriptor."""
    import ray

    log_file = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
    handler = logging.StreamHandler(log_file)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # `ray` and the Ray loggers with handlers of their own (ray.data): their console handlers
    # (which write to sys.stderr when they emit) are replaced by the file's; files stay.
    saved: list[tuple[logging.Logger, list[logging.Handler], int]] = []
    names = ["ray"] + [n for n in logging.Logger.manager.loggerDict if n.startswith("ray.")]
    for name in names:
        logger = logging.getLogger(name)
        if name != "ray" and (logger.propagate or not logger.handlers):
            continue
        saved.append((logger, logger.handlers[:], logger.level))
        kept = [
            h
            for h in logger.handlers
            if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler)
        ]
        logger.handlers = [*kept, handler]
        if name == "ray":
            logger.propagate = False
            logger.setLevel(logging.INFO)
    ray_dir = os.path.dirname(ray.__file__) + os.sep
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        show(
            message,
            category,
            filename,
            lineno,
            log_file if filename.startswith(ray_dir) else file,
            line,
        )

    warnings.showwarning = showwarning
    old_stderr = sys.stderr
    try:
        on_fd2 = old_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's or click's capture: no fd
        on_fd2 = False
    old_stderr.flush()
    terminal_fd = os.dup(2)
    terminal = None
    moved: list[logging.StreamHandler] = []
    if on_fd2:
        terminal = open(
            os.dup(terminal_fd),
            "w",
            buffering=1,
            encoding=old_stderr.encoding,
            errors="backslashreplace",
        )
        sys.stderr = terminal
        moved = [
            h
            for h in logging.root.handlers
            if isinstance(h, logging.StreamHandler) and h.stream is old_stderr
        ]
        for h in moved:
            h.setStream(terminal)
    os.dup2(log_file.fileno(), 2)
    try:
        yield
    finally:
        if terminal is not None:
            terminal.flush()
        os.dup2(terminal_fd, 2)
        os.close(terminal_fd)
        if terminal is not None:
            sys.stderr = old_stderr
            for h in moved:
                h.setStream(old_stderr)
            terminal.close()
        warnings.showwarning = show
        for logger, handlers, level in saved:
            logger.handlers = handlers
            logger.setLevel(level)
        log_file.close()


def _quiet_ray_data() -> None:
    """Ray Data's progress bars off (fgid draws its own); its log lines go wherever the `ray`
    logger goes (OUT/logs/ray.log unless --verbose)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    with contextlib.suppress(AttributeError):
        ctx.print_on_execution_start = False
    with contextlib.suppress(AttributeError):
        ctx.enable_operator_progress_bars = False
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")


def _find_model_error(exc: BaseException) -> ModelFileError | None:
    """A ModelFileError raised inside a Ray worker arrives wrapped; find it."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ModelFileError):
            return e
        cause = getattr(e, "cause", None)
        stack.extend(
            [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
        )
    text = str(exc)
    marker = "ModelFileError: "
    if marker in text:
        return ModelFileError(text.split(marker, 1)[1].splitlines()[0])
    return None


def run_build(cfg: BuildConfig) -> BuildSummary:
    """Plan, process the uncommitted shards on Ray, commit them, merge the index.

    The whole run holds OUT's lock (fgid_builder.lock): a second run on the same OUT raises
    `LockHeld` (exit 2) before it touches anything; a lock left by a killed run is taken over.
    A new plan is hashed while Ray starts; Ray calls stay in this thread. The index merge and
    the report come after Ray has stopped, in this thread too."""
    from fgid_builder.lock import LockUnsupported, acquire, release

    t0 = time.perf_counter()
    models = check_models(cfg)
    try:
        lock = acquire(cfg.out)
    except LockUnsupported as e:
        # an object store whose fsspec driver cannot create an object only if it is absent
        log.warning("no lock on OUT (%s): run one build at a time on it", e)
        return _run_build(cfg, models, t0)
    try:
        return _run_build(cfg, models, t0)
    finally:
        release(lock)


def _run_build(cfg: BuildConfig, models: dict[str, Any], t0: float) -> BuildSummary:
    from concurrent.futures import ThreadPoolExecutor

    summary = BuildSummary()
    out, summary.temp_files_removed = _prepare_out(cfg, models)
    cfg.exclusions = _load_exclusions(cfg, out, models)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fgid-build") as background:
        t_stop = None
        try:
            with contextlib.ExitStack() as ray_session:
                plan, sizes, todo, images = _plan_and_start_ray(
                    cfg, out, summary, t0, background, ray_session
                )
                if todo:
                    t1 = time.perf_counter()
                    written, timing = _process(
                        cfg, out, images, {s: sizes[s] for s in todo}, summary.workers
                    )
                    summary.seconds_process = time.perf_counter() - t1
                    for k, v in timing.items():
                        setattr(summary, k, v)
                    summary.images_read = len(images)
                    summary.shards_written = len(todo)
                    summary.samples_written = written
                    summary.images_per_second = len(images) / max(summary.seconds_process, 1e-9)
                    summary.worker_utilisation = summary.worker_seconds / max(
                        summary.seconds_process * summary.workers, 1e-9
                    )
                t_stop = time.perf_counter()
        except BuildError:
            raise
        except Exception as e:
            model_error = _find_model_error(e)
            if model_error is not None:
                raise model_error from None
            raise
        if summary.seconds_ray_start and t_stop is not None:
            summary.seconds_ray_stop = time.perf_counter() - t_stop
    # a worker killed while writing (and retried) leaves a temporary file; none is writing now
    summary.temp_files_removed += len(out.clean_temp_files("", SHARDS, PARTS))
    # After Ray has stopped, in this thread: run inside pytest's captured output, the report
    # written in a thread while ray.shutdown ran ended the test process without a word.
    table, summary.report, summary.report_error, summary.seconds_report = _finish(
        cfg, out, plan, list(sizes)
    )
    status = table.column("status").to_pylist()
    reasons = table.column("reason").to_pylist()
    summary.samples = sum(1 for s in status if s == "ok")
    summary.rejects = dict(
        sorted(Counter(r for s, r in zip(status, reasons, strict=True) if s != "ok").items())
    )
    summary.seconds_total = time.perf_counter() - t0
    out.write_text(f"{LOGS}/summary.json", json.dumps(asdict(summary), indent=1) + "\n")
    return summary


def _plan_and_start_ray(
    cfg: BuildConfig,
    out: Dataset,
    summary: BuildSummary,
    t0: float,
    background: Any,
    ray_session: contextlib.ExitStack,
) -> tuple[Any, dict[str, int], list[str], list[dict[str, Any]]]:
    """The plan (read, or made: hashed in `background` while Ray starts in this thread), its
    shard sizes, the shards still to do and their images; Ray started when there is work.

    A resume reads its plan first and starts Ray only for uncommitted shards."""
    from pipelines.plan import planned_images, read_plan, resolve_row, shard_sizes

    threads = max(2, cfg.workers or os.cpu_count() or 2)
    started = False
    if out.is_file(PLAN):
        log.info("resuming: reading the plan in %s", out.url_of(PLAN))
        with out.open(PLAN) as f:
            plan = read_plan(f)
        plan = _checked_plan(cfg, out, plan, threads)
        summary.seconds_plan = time.perf_counter() - t0
    else:
        listed = _list_for_plan(cfg)
        maybe_work = any(
            item.reason is None and _could_be_image(item.path, cfg.max_input_bytes)
            for item in listed.first
        )
        if maybe_work and cfg.plans_on_cluster():
            _start_ray(cfg, summary, ray_session)
            started = True
            t_hash = time.perf_counter()
            plan = _make_plan(cfg, out, listed, threads, workers=summary.workers)
            summary.seconds_plan = (t_hash - t0) + time.perf_counter() - t_hash
            summary.seconds_plan -= summary.seconds_ray_start
        elif maybe_work:
            t_hash = time.perf_counter()
            hashing = background.submit(_timed, _make_plan, cfg, out, listed, threads)
            summary.planned_while_ray_started = True
            _start_ray(cfg, summary, ray_session)
            started = True
            plan, seconds_hash = hashing.result()
            summary.seconds_plan = (t_hash - t0) + seconds_hash
        else:  # nothing that could be an image (unreadable, empty, too large...): no Ray
            plan = _make_plan(cfg, out, listed, threads)
            summary.seconds_plan = time.perf_counter() - t0
    sizes = shard_sizes(plan)
    summary.images_listed = plan.num_rows
    summary.images_planned = sum(sizes.values())
    summary.shards_total = len(sizes)
    todo = [s for s in sizes if not out.is_committed(s)]
    summary.shards_skipped = len(sizes) - len(todo)
    if summary.shards_skipped:
        log.info("skipping %d committed shards", summary.shards_skipped)
    todo_set = set(todo)
    base = cfg.input_base()
    images = [resolve_row(r, base) for r in planned_images(plan) if r["shard"] in todo_set]
    if images:
        _check_inputs_present(cfg, images)
        if not started:
            _start_ray(cfg, summary, ray_session)
    return plan, sizes, todo, images


def _checked_plan(cfg: BuildConfig, out: Dataset, plan: Any, threads: int) -> Any:
    """OUT's plan when this run's INPUT lists the same inputs; with `--append`, the plan
    extended by the new ones (written before any work); a BuildError (exit 2) otherwise."""
    from pipelines.plan import compare_inputs

    listed = _list_for_plan(cfg)
    changes = compare_inputs(
        plan, listed, base=cfg.input_base(), threads=threads, fetch=cfg.fetch_policy()
    )
    if not changes:
        return plan
    if not cfg.append:
        raise BuildError(
            f"the inputs differ from the plan in {cfg.out}: {changes.summary()}; rerun with "
            "--append to add the new inputs in new shards, or build into a new OUT"
        )
    if changes.removed or changes.changed:
        raise BuildError(
            f"--append only adds inputs, but {changes.summary()}; removing a person is "
            "`fgid erase`, changed files need a new OUT"
        )
    before = plan.num_rows
    plan = _make_plan(cfg, out, changes.added, threads, after=plan)
    log.info("appending %d inputs to the plan (rows %d-%d)", len(changes.added), before,
             plan.num_rows - 1)  # fmt: skip
    return plan


def _could_be_image(path: str, max_bytes: int) -> bool:
    """A regular file of 1..max_bytes bytes (a stat, nothing opened); a URL: maybe."""
    import stat

    if is_url(path):
        return True  # a download or an object: read by the planning
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and 0 < st.st_size <= max_bytes


def _timed(fn, *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def _start_ray(cfg: BuildConfig, summary: BuildSummary, ray_session: contextlib.ExitStack) -> None:
    t = time.perf_counter()
    import ray.data  # noqa: F401 - Ray Data's own import (~0.5 s), here rather than in _process

    summary.workers = ray_session.enter_context(_ray_session(cfg))
    summary.seconds_ray_start = time.perf_counter() - t


def _finish(
    cfg: BuildConfig, out: Dataset, plan: Any, shards: list[str]
) -> tuple[Any, str | None, str | None, float]:
    """The final index and the QA report (after Ray has stopped): (index table, report path,
    report error, seconds writing the report)."""
    table = _merge_final_index(out, plan, shards)
    if not cfg.report:
        return table, None, None, 0.0
    if not out.local:
        log.info("the QA report renders a local OUT only: `fgid report` on a local copy of %s",
                 cfg.out)  # fmt: skip
        return table, None, None, 0.0
    t = time.perf_counter()
    report, error = _write_report(out)
    return table, report, error, time.perf_counter() - t


def _write_report(out: Dataset) -> tuple[str | None, str | None]:
    """The QA report of the finished dataset: (path, None), or (None, error) when it failed;
    a failure never touches the committed shards and index (the traceback goes to logs/,
    when there is room for it)."""
    import shutil
    import traceback

    from eval.report import REPORT_DIR, write_report

    error_file = f"{LOGS}/report_error.txt"
    try:
        path = write_report(out.url)
    except Exception as e:  # noqa: BLE001 - a report failure must not lose the dataset
        line = one_line(e)
        log.error("the QA report failed (the dataset is complete): %s", line)
        # a half-written report is no use and, on a full disk, holds the space the error
        # file and the summary need
        if out.local:
            shutil.rmtree(out.path(REPORT_DIR), ignore_errors=True)
        try:
            out.write_text(error_file, traceback.format_exc())
        except OSError as write_error:  # a full or read-only disk: the line is all there is
            return None, f"{line} (no traceback: {one_line(write_error)})"
        return None, f"{line} (traceback in {out.url_of(error_file)})"
    with contextlib.suppress(OSError):
        out.remove(error_file)
    return str(path), None


def _check_inputs_present(cfg: BuildConfig, images: list[dict[str, Any]]) -> None:
    """A resume reads the plan's paths under this run's INPUT: an INPUT that lacks them is a
    mistake to stop at (not a shard of `unreadable` rejects)."""
    from pipelines.plan import row_path

    missing = [r for r in images if not is_url(r["path"]) and not os.path.exists(row_path(r))]
    if missing and len(missing) == len(images):
        raise BuildError(
            f"none of the {len(images)} planned inputs still to process is under "
            f"{'the installed packages' if cfg.demo else cfg.input} "
            f"(e.g. {missing[0]['source_uri']}); resume with the INPUT that was planned"
        )


def _process(
    cfg: BuildConfig,
    out: Dataset,
    images: list[dict[str, Any]],
    sizes: dict[str, int],
    workers: int,
) -> tuple[int, dict[str, float]]:
    """Stream the shards through Ray Data; the workers write and commit each shard, and the
    driver receives only the commit records (stats JSON: counts and keys, no sample bytes)."""
    from tqdm import tqdm

    from pipelines.ray_stages import build_dataset

    _quiet_ray_data()
    ds = build_dataset(images, cfg, workers=workers, out=out.url)
    written = 0
    worker_seconds = 0.0
    committed: set[str] = set()
    arrivals: list[tuple[float, int]] = []  # (when a commit record arrived, its images)
    start = time.perf_counter()
    bar_opts = {"disable": not cfg.progress, "file": sys.stderr, "dynamic_ncols": True}
    with (
        tqdm(total=len(images), desc="images", unit="img", position=0, **bar_opts) as img_bar,
        tqdm(total=len(sizes), desc="shards", unit="shard", position=1, **bar_opts) as shard_bar,
    ):
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            received = time.perf_counter()
            for row in batch.to_pylist():
                record = json.loads(row["record"])
                shard = row["shard"]
                if shard in committed or shard not in sizes or record["images"] != sizes[shard]:
                    raise RuntimeError(f"unexpected commit record for shard {shard}")
                committed.add(shard)
                worker_seconds += row["worker_seconds"] or 0.0
                written += int(record["samples"])
                arrivals.append((received, int(record["images"])))
                img_bar.update(int(record["images"]))
                shard_bar.update(1)
    missing = sorted(set(sizes) - committed)
    if missing:
        raise RuntimeError(f"the pipeline ended with uncommitted shards: {missing}")
    timing = {"worker_seconds": worker_seconds}
    if arrivals:
        timing["seconds_first_result"] = arrivals[0][0] - start
    if len(arrivals) > 1 and arrivals[-1][0] > arrivals[0][0]:
        # the rate once the actors are up: the images committed after the first shard, over
        # the time from that shard to the last
        later = sum(n for t, n in arrivals if t > arrivals[0][0])
        timing["steady_images_per_second"] = later / (arrivals[-1][0] - arrivals[0][0])
    return written, timing


# --------------------------------------------------------------------------- CLI


def _parse_stage_values(opt: str, values: Sequence[str], cast) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        stage, eq, value = item.partition("=")
        if not eq:
            raise click.BadParameter(f"expected STAGE=VALUE, got {item!r}", param_hint=opt)
        try:
            out[stage.strip()] = cast(value)
        except ValueError:
            raise click.BadParameter(f"bad value in {item!r}", param_hint=opt) from None
    return out


@click.command(
    "build", context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP
)
@click.argument("input", required=False)
@click.argument("out", required=False)
@click.option(
    "--workers",
    type=int,
    default=0,
    show_default=True,
    help="CPU workers (actor-pool size; local Ray gets that many CPUs). 0 = all CPUs.",
)
@click.option(
    "--address",
    default=None,
    help="Join this existing Ray cluster (e.g. 127.0.0.1:6379) instead of a local one.",
)
@shard_size_option
@click.option(
    "--strict",
    is_flag=True,
    help="Exit with 1 if any input or face was rejected, or the QA report failed.",
)
@backend_option("detect")
@backend_option("parse")
@backend_option("embed")
@backend_option("caption")
@models_dir_option
@min_face_option
@max_faces_option
@click.option(
    "--demo",
    is_flag=True,
    help="Build from the face photos shipped inside installed packages: fgid build --demo OUT.",
)
@click.option(
    "--batch-size",
    type=int,
    default=4,
    show_default=True,
    help="Images per Ray batch, every stage (memory per worker grows with it); "
    "--STAGE-batch-size sets one stage (it then runs in its own actor pool).",
)
@click.option(
    "--fuse/--no-fuse",
    default=True,
    show_default=True,
    help="Run all CPU stages in one actor pool (fastest on CPU) or one pool per stage.",
)
@click.option(
    "--concurrency",
    multiple=True,
    metavar="STAGE=N",
    help="Actors for one stage (detect, parse, embed, caption, encode); the same as "
    "--detector-concurrency etc.",
)
@click.option(
    "--gpus",
    multiple=True,
    metavar="STAGE=F",
    help="GPUs per actor for a stage (its actors then run in their own pool); the same as "
    "--detector-gpus etc.",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Progress bars on stderr."
)
@click.option(
    "--max-input-bytes",
    type=int,
    default=DEFAULT_MAX_INPUT_BYTES,
    show_default=True,
    help="An input (file, object or download) larger than this is a `too_large` reject, "
    "never read whole.",
)
@click.option(
    "--read-timeout",
    type=float,
    default=DEFAULT_READ_TIMEOUT,
    show_default=True,
    help="Seconds reading one input may take; slower is a `timeout` reject.",
)
@click.option(
    "--follow-external-symlinks",
    is_flag=True,
    help="Follow symlinks under INPUT that lead out of it (by default they are "
    "`outside_input` rejects, not followed).",
)
@click.option(
    "--max-entries",
    type=int,
    default=DEFAULT_MAX_ENTRIES,
    show_default=True,
    help="Refuse (exit 2) an INPUT folder or list file with more entries than this.",
)
@click.option(
    "--verbose",
    is_flag=True,
    help="Show Ray's own messages (its warnings, Ray Data's execution lines, the workers' "
    "output) on the terminal; by default they go to OUT/logs/ray.log.",
)
@click.option(
    "--report/--no-report",
    default=True,
    show_default=True,
    help="Write the QA report OUT/report/index.html at the end (as `fgid report OUT`). If it "
    "fails the dataset is kept and the error printed; exit 1 only with --strict.",
)
@click.option(
    "--fetch-timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    help="Seconds per download attempt (connect, each read and the whole body); then a "
    "`timeout` reject.",
)
@click.option(
    "--fetch-retries",
    type=int,
    default=DEFAULT_RETRIES,
    show_default=True,
    help="Extra attempts, with exponential backoff, after a timeout, a dropped connection, "
    "a 5xx or a 429.",
)
@click.option(
    "--per-host",
    type=int,
    default=DEFAULT_PER_HOST,
    show_default=True,
    help="Downloads in flight per host from each worker process (planning: from the driver).",
)
@click.option(
    "--robots/--ignore-robots",
    default=True,
    show_default=True,
    help="Honour the `X-Robots-Tag: noai/noimageai` opt-out of downloads (`opted_out` rejects).",
)
@click.option(
    "--plan-on",
    type=click.Choice(list(PLAN_ON)),
    default="auto",
    show_default=True,
    help="Where a new plan hashes and downloads its inputs: driver (threads, while Ray "
    "starts), cluster (Ray tasks), auto (the cluster when joining one with --address). The "
    "plan is the same either way.",
)
@click.option(
    "--append",
    is_flag=True,
    help="OUT was planned from fewer inputs: plan the new ones into new shards after the "
    "existing ones (deterministic). Without it a rerun whose inputs differ from OUT's plan "
    "(added, removed or changed files) is refused with exit 2.",
)
@click.option(
    "--exclude",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Opt-out list (lines `sha256 HEX`, `key KEY`, `photo PATH`): never write those photos "
    "or faces (reject reason opted_out). OUT/optout.txt (written by fgid erase) is always read.",
)
@click_options
def build_command(
    input: str | None,
    out: str | None,
    concurrency: tuple[str, ...],
    gpus: tuple[str, ...],
    **options: Any,
) -> None:
    """Build an FGID dataset from INPUT into OUT: OUT/shards/NNNNNN.tar + .json,
    OUT/index.parquet. INPUT is a folder (searched recursively), a text file of paths, or a
    manifest (.parquet/.csv/.jsonl, local or on an object store such as s3://) with a `url`
    or `path` column; its other columns pass through to each sample's JSON (`source.extra`)
    and the index (`extra`). URLs are downloaded in the workers (--fetch-*, --per-host,
    --max-input-bytes, --robots).

    Re-running the same command resumes: committed shards are kept, the rest is redone. A
    rerun whose INPUT differs from OUT's plan is refused (exit 2, with what was added, removed
    or changed) unless --append, which plans the added inputs into new shards.

    Per-stage settings: `--stage-config FILE` (YAML: stage -> batch_size, concurrency,
    num_gpus, num_cpus, options) and the flags `--detector-option KEY=VALUE` (repeatable, the
    value read as YAML), `--detector-batch-size`, `--detector-gpus`, `--detector-concurrency`
    (and the same for parser, embedder, captioner); flags win over the file. Backend options
    change the output and are recorded in OUT/build.json; batch sizes, GPUs and actors do not.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if options["demo"] and out is None:
        input, out = None, input
    if out is None:
        raise click.UsageError("expected INPUT OUT (or --demo OUT)")
    try:
        try:
            resources = resources_from_click_kwargs(options)
        except ValueError as e:
            raise BuildError(f"stage settings: {e}") from None
        cfg = BuildConfig(
            input=input,
            out=out,
            concurrency=_parse_stage_values("--concurrency", concurrency, int),
            gpus=_parse_stage_values("--gpus", gpus, float),
            resources=resources,
            **options,
        )
        summary = run_build_watched(cfg)
    except (BuildError, ModelFileError, LockHeld, ManifestError) as e:
        click.echo(f"fgid build: {e}", err=True)
        sys.exit(EXIT_REFUSED)
    except RunFailed as e:
        click.echo(f"fgid build: the run failed: {e}", err=True)
        sys.exit(EXIT_FAILED)
    except click.ClickException:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the run: one line and exit 3
        click.echo(f"fgid build: the run failed: {_failure_line(e, out)}", err=True)
        sys.exit(EXIT_FAILED)
    for line in summary.lines():
        click.echo(line)
    logs = Path(cfg.out) / LOGS if is_local(cfg.out) else f"{cfg.out.rstrip('/')}/{LOGS}"
    ray_log = "" if is_local(cfg.out) else f" (Ray's messages: {_local_logs(cfg.out) / RAY_LOG})"
    click.echo(f"dataset: {cfg.out} (shards/, index.parquet); logs: {logs}{ray_log}")
    if summary.report_error:
        click.echo(f"fgid build: the QA report failed: {summary.report_error}", err=True)
    if cfg.strict and (summary.rejects or summary.report_error):
        what = f"{sum(summary.rejects.values())} rejects"
        if summary.report_error:
            what += ", the QA report failed"
        click.echo(f"fgid build --strict: {what}", err=True)
        sys.exit(EXIT_REJECTS)


class RunFailed(Exception):
    """The run failed (I/O, Ray, the build process died): one line, exit code 3."""


def run_build_watched(cfg: BuildConfig) -> BuildSummary:
    """`run_build` in a forked child process that this one watches, so that a run whose
    process Ray ends from C++ (a killed raylet makes the driver `_exit(1)`, with no Python
    exception and no message) still ends with one line and exit 3. Refusals come back as
    `BuildError` (exit 2), failures as `RunFailed`. The child dies with this process (a
    `kill -9` of `fgid build` stops the run). In process off Linux and when Ray was already
    imported here (a caller's session, or an earlier run in this process): a fork of a process
    that has run Ray's core worker (its gRPC and event-loop threads) can crash the child
    (seen: signal 11 in a test process after `fgid stage` ran Ray in it)."""
    import multiprocessing

    if not sys.platform.startswith("linux") or "ray" in sys.modules:
        return run_build(cfg)
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_watched_child, args=(send, cfg, os.getpid()), name="fgid-build")
    child.start()
    send.close()
    try:
        kind, value = receive.recv()
    except EOFError:
        kind, value = "died", None
    finally:
        child.join()
    if kind == "ok":
        return value
    if kind == "refused":
        raise BuildError(value)
    if kind == "failed":
        raise RunFailed(value)
    code = child.exitcode or 0
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    raise RunFailed(
        f"the build process ended without a result ({how}): its Ray raylet died or it was "
        f"killed (out of memory?){_ray_log_hint(cfg.out)}; rerun the same command to resume"
    )


def _ray_log_hint(out: str) -> str:
    """Where Ray's own messages of this run are (not on the terminal unless --verbose)."""
    path = _local_logs(out) / RAY_LOG
    return f" (Ray's messages: {path})" if path.is_file() and path.stat().st_size else ""


def _watched_child(send: Any, cfg: BuildConfig, parent: int) -> None:
    _die_with_parent(parent)
    try:
        message = ("ok", run_build(cfg))
    except (BuildError, ModelFileError, LockHeld, ManifestError) as e:
        message = ("refused", str(e))
    except Exception as e:  # noqa: BLE001 - handed to the parent as its one line
        message = ("failed", _failure_line(e, cfg.out))
    send.send(message)
    send.close()


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl
        os._exit(EXIT_FAILED)


def _failure_line(e: BaseException, out: str) -> str:
    """The one line of a failed run; the traceback goes to OUT/logs/error.txt when it can."""
    import traceback

    cause = _stage_os_error(e)
    line = one_line(e) if cause is None else cause
    hint = ""
    if cause is None and _is_ray_failure(e):
        hint = (
            " (Ray failed: a raylet or worker died or the cluster is overloaded; rerun to resume)"
            + _ray_log_hint(out)
        )
    try:
        dataset = Dataset(out)
        dataset.makedirs(LOGS)
        dataset.write_text(f"{LOGS}/error.txt", traceback.format_exc())
    except Exception:  # noqa: BLE001 - an OUT that cannot be written: the line is all there is
        return line + hint
    return f"{line}{hint} (traceback in {dataset.url_of(LOGS, 'error.txt')})"


def _stage_os_error(e: BaseException) -> str | None:
    """The one line of an OSError that a stage raised in a worker (a shard commit on a full or
    read-only OUT), out of Ray's wrappers (RayTaskError, Ray Data's UserCodeException): from the
    exception itself when Ray kept it, else from the last line of the remote traceback."""
    import errno as errno_names
    import re

    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, OSError) and x.strerror:
            return one_line(x)
        inner = getattr(x, "cause", None)
        x = inner if isinstance(inner, BaseException) else x.__cause__
    if not _is_ray_failure(e):
        return None
    text = str(getattr(e, "traceback_str", "") or e)
    found = re.findall(r"^(\w*Error): \[Errno (\d+)\] ([^\n]*)$", text, re.MULTILINE)
    if not found:
        return None
    name, number, rest = found[-1]
    return f"{name} [{errno_names.errorcode.get(int(number), '')}] {rest}"


def _is_ray_failure(e: BaseException) -> bool:
    try:
        import ray.exceptions
    except ImportError:
        return False
    if isinstance(e, ray.exceptions.RayError):
        return True
    text = str(e)
    return "raylet" in text or "GCS" in text or "node timed out during startup" in text
