"""Step-cache keys, Docker's rule: a step's key is its parent's key (or the base image's digest)
and its canonical text; a COPY/ADD's also takes the digest of the files it reads
(Context.digest); ENV, WORKDIR, USER and the other metadata steps are keyed too, since they change
what later RUNs see. A RUN's canonical text carries the ARG values in scope (Docker: a changed
build arg misses the cache at its first use)."""
from __future__ import annotations

import hashlib
import json

from vmmd.images.dockerfile import Step

VERSION = 1             # bump when what a step does for the same key changes


def step_key(parent_digest: str, step: Step, files_digest: str | None = None) -> str:
    if step.kind in ("COPY", "ADD") and not files_digest:
        raise ValueError(f"line {step.line}: a {step.kind} step's key needs the digest of the "
                         "files it reads")
    if step.kind not in ("COPY", "ADD") and files_digest:
        raise ValueError(f"line {step.line}: a {step.kind} step reads no files from the context")
    doc = json.dumps({"v": VERSION, "parent": parent_digest, "step": step.canonical,
                      "files": files_digest or ""}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(doc.encode()).hexdigest()
