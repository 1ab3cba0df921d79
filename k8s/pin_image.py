"""Pin one image of k8s/release/kustomization.yaml to an immutable tag or digest.

    python k8s/pin_image.py handserve registry.example.com/handserve:4k3x7dqwpoxbiaav
    python k8s/pin_image.py handserve registry.example.com/handserve@sha256:0f3c...

The release component is the one place the overlays, the training Job and the load-test Job
take their images from, so a rollout is a new pin and a rollback is the previous one. This does
what ``kustomize edit set image NAME=REF`` does to that file (``kubectl`` ships kustomize's build
but not its ``edit``), and refuses what would make a rollout meaningless: a mutable tag such as
``latest``, no tag at all, or an image name the file does not list (a typo would otherwise add
an entry nothing uses). Comments at the top of the file are kept.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

RELEASE = Path(__file__).resolve().parent / "release" / "kustomization.yaml"
#: Tags that registries and people move to newer builds: never pinned.
MUTABLE_TAGS = frozenset({"latest", "stable", "main", "master", "dev", "edge", "nightly"})
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class PinError(ValueError):
    """A reference or release file that cannot be pinned; the message names which and why."""


def parse_reference(ref: str) -> dict[str, str]:
    """``REPO:TAG`` or ``REPO@sha256:HEX`` as kustomize ``images`` fields."""
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        if not _DIGEST.match(digest):
            raise PinError(f"{ref!r}: a digest is sha256: and 64 lowercase hex digits")
        return {"newName": repo, "digest": digest}
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:  # no tag, or the colon was a registry port
        raise PinError(f"{ref!r}: give an immutable tag (REPO:TAG) or a digest (REPO@sha256:...)")
    if tag.lower() in MUTABLE_TAGS:
        raise PinError(f"{ref!r}: {tag!r} is a mutable tag; pin the Bento tag or a digest")
    if not _TAG.match(tag):
        raise PinError(f"{ref!r}: {tag!r} is not a valid image tag")
    return {"newName": repo, "newTag": tag}


def pin(path: Path, name: str, ref: str) -> dict[str, Any]:
    """Rewrite the ``images`` entry ``name`` of ``path`` to ``ref``; returns the new entry."""
    fields = parse_reference(ref)
    text = path.read_text()
    doc = yaml.safe_load(text)
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list):
        raise PinError(f"{path}: no `images:` list to pin in")
    entries = [e for e in images if isinstance(e, dict) and e.get("name") == name]
    if len(entries) != 1:
        known = ", ".join(str(e.get("name")) for e in images if isinstance(e, dict))
        raise PinError(f"{path}: image {name!r} is not listed once (listed: {known})")
    entry = entries[0]
    for key in ("newName", "newTag", "digest"):
        entry.pop(key, None)
    entry.update(fields)
    lines = text.splitlines(keepends=True)
    header = "".join(lines[: next((i for i, ln in enumerate(lines) if not ln.startswith("#")), 0)])
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="image name the manifests use (handserve, handserve-gpu, ...)")
    parser.add_argument("reference", help="REPO:TAG or REPO@sha256:DIGEST to pin it to")
    parser.add_argument(
        "--file", type=Path, default=RELEASE, help="release kustomization (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        entry = pin(args.file, args.name, args.reference)
    except (PinError, OSError, yaml.YAMLError) as exc:
        sys.stderr.write(f"pin_image: error: {exc}\n")
        return 2
    sys.stdout.write(f"pinned {args.name} -> {entry} in {args.file}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
