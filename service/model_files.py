"""Read-only downloads of the files a served model runs: for the demo page's device mode.

The demo page can run a model in the browser (LiteRT.js) instead of sending every camera frame
to the server. For its answers to agree with the server's, it must run the very files the server
runs: the version's ``.tflite`` (and, for a hand-feature head, its embedder copy) and MediaPipe's
hand models. This module answers

- ``GET /models/{name}/{version}/files/{path}``: a file of a **served** version, only a path
  its manifest lists (``files``, with their sha256), read from the version folder the server
  verified and checked again against that sha256 as it is read (a file changed on disk since is
  refused, never sent);
- ``GET /hand_models``: which hand models this server runs (palm detector, landmark model) with
  their sha256; ``GET /hand_models/{file}``: one of them, from the folder or the
  ``hand_landmarker.task`` bundle :mod:`handserve.hands` reads.

Every answer carries its sha256 (``ETag`` and ``X-Content-SHA256``) so the page, a cache or a
user can check what it got; nothing outside these lists can be named (no path is joined from the
request). Refusals are the API's one error shape (``not_found``, ``unknown_model``,
``unknown_version``).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

from starlette.responses import Response

from handserve import hands, integers
from service.dataplane import DataPlane
from service.errors import ApiError
from service.schemas import MAX_INT_DIGITS

#: Content types of what is served (a .tflite is opaque bytes to a browser).
_TYPES = {".json": "application/json", ".txt": "text/plain; charset=utf-8"}
#: Immutable per (version, sha256): a browser may keep it; revalidation is by ETag.
_CACHE = "private, max-age=3600"


def _answer(data: bytes, name: str, digest: str) -> Response:
    media = _TYPES.get(Path(name).suffix, "application/octet-stream")
    return Response(
        data,
        media_type=media,
        headers={"ETag": f'"{digest}"', "X-Content-SHA256": digest, "Cache-Control": _CACHE},
    )


def version_file(plane: DataPlane, name: str, version: str, path: str) -> Response:
    """One file a served version's manifest lists, checked against its sha256 as it is read.

    Raises:
        ApiError: ``unknown_model``/``unknown_version`` (not served), ``bad_parameter`` (a
            version that is not a number), ``not_found`` (a path the manifest does not list,
            or absent from this server's copy: a Bento packs only what it serves).
    """
    number = integers.ascii_int(version, MAX_INT_DIGITS)  # the project's one whole-number rule
    if number is None:
        raise ApiError("bad_parameter", f"version must be a number, got {version[:20]!r}")
    model = plane.resolve(name, number)
    listed = {entry.path: entry for entry in model.manifest.files}
    entry = listed.get(path)
    if entry is None:
        raise ApiError(
            "not_found",
            f"{path!r} is not a file of {name} version {number}; its files: {sorted(listed)}",
        )
    try:
        data = (model.version_dir / entry.path).read_bytes()
    except OSError:
        raise ApiError(
            "not_found", f"{path!r} of {name} version {number} is not on this server"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise ApiError(
            "not_found",
            f"{path!r} of {name} version {number} changed on disk since it was verified",
        )
    return _answer(data, entry.path, digest)


def _read_hand_model(source: Path, file: str) -> bytes:
    if source.is_file():  # MediaPipe's hand_landmarker.task bundle (HANDSERVE_HAND_MODELS)
        with zipfile.ZipFile(source) as bundle:
            return bundle.read(hands.TASK_MEMBERS[file])
    return (source / file).read_bytes()


def hand_models_index() -> dict[str, Any]:
    """The hand models this server runs: ``{"palm", "landmark", "files": {name: sha256},
    "available"}`` (``available`` false, and no files, when none are installed)."""
    source = hands.models_source()
    files: dict[str, str] = {}
    if hands.models_available(source):
        for file in hands.MODEL_SHA256:
            try:
                files[file] = hashlib.sha256(_read_hand_model(source, file)).hexdigest()
            except (OSError, KeyError, zipfile.BadZipFile):
                files = {}
                break
    return {
        "available": bool(files),
        "palm": hands.PALM_MODEL,
        "landmark": hands.LANDMARK_MODEL,
        "files": files,
    }


def hand_model_file(file: str) -> Response:
    """One of the hand models :func:`hand_models_index` lists, checked as the server checks it.

    Raises:
        ApiError: ``not_found`` for another name, or when the models are not installed or not
            the expected files.
    """
    if file not in hands.MODEL_SHA256:
        raise ApiError(
            "not_found", f"{file!r} is not a hand model; these are: {sorted(hands.MODEL_SHA256)}"
        )
    source = hands.models_source()
    try:
        data = _read_hand_model(source, file)
    except (OSError, KeyError, zipfile.BadZipFile):
        raise ApiError("not_found", "the hand models are not installed on this server") from None
    digest = hashlib.sha256(data).hexdigest()
    if source.is_dir() and digest != hands.MODEL_SHA256[file]:
        raise ApiError("not_found", f"{file} on this server is not the expected file (sha256)")
    return _answer(data, file, digest)
