"""Docker's two path-pattern languages, compiled to regular expressions over context-relative
POSIX paths:
- .dockerignore (moby/patternmatcher): `*` and `?` within one component, `[...]`, `\\` escapes,
  `**` across components, `!` exceptions, the last matching line wins, and a pattern that matches
  a parent directory excludes what is under it.
- COPY/ADD sources (Go's filepath.Match): `*`, `?`, `[...]` (`[^...]` negates), `\\` escapes,
  nothing across a `/`."""
from __future__ import annotations

import posixpath
import re

_SPECIAL = set(".+()|{}$^")


def _class(p: str, i: int) -> tuple[str, int]:
    """A `[...]` class starting at p[i] == '['; Go writes negation as `^` (and so does re)."""
    j = i + 1
    if j < len(p) and p[j] in "^!":
        j += 1
    if j < len(p) and p[j] == "]":
        j += 1
    while j < len(p) and p[j] != "]":
        j += 2 if p[j] == "\\" else 1
    if j >= len(p):
        raise ValueError(f"bad pattern {p!r}: '[' without ']'")
    body = p[i + 1:j]
    if body.startswith("!"):
        body = "^" + body[1:]
    return "[" + body.replace("[", "\\[") + "]", j + 1


def _compile(p: str, double_star: bool) -> re.Pattern[str]:
    out = ["^"]
    i = 0
    while i < len(p):
        ch = p[i]
        if ch == "*":
            if double_star and p[i + 1:i + 2] == "*":
                i += 2
                if p[i:i + 1] == "/":
                    i += 1
                out.append(".*" if i >= len(p) else "(.*/)?")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            cls, i = _class(p, i)
            out.append(cls)
            continue
        elif ch == "\\":
            i += 1
            out.append(re.escape(p[i]) if i < len(p) else "\\\\")
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out), re.S)


def has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def copy_pattern(pattern: str) -> re.Pattern[str]:
    """A COPY source pattern (already context-relative) as filepath.Match reads it."""
    return _compile(pattern, double_star=False)


class IgnoreRules:
    """A parsed .dockerignore."""

    def __init__(self, text: str = ""):
        self.rules: list[tuple[bool, re.Pattern[str]]] = []    # (exception, pattern)
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            if exception:
                line = line[1:].strip()
            if not line:
                continue
            line = posixpath.normpath(line)
            if len(line) > 1 and line.startswith("/"):
                line = line.lstrip("/")
            try:
                self.rules.append((exception, _compile(line, double_star=True)))
            except ValueError as e:
                raise ValueError(f".dockerignore: {e}") from None

    def excludes(self, rel: str) -> bool:
        """Whether the context-relative path `rel` is left out (patternmatcher's
        MatchesOrParentMatches)."""
        matched = False
        parts = rel.split("/")
        parents = ["/".join(parts[:i + 1]) for i in range(len(parts) - 1)]
        for exception, rx in self.rules:
            if exception != matched:
                continue            # an exception only matters once excluded, and vice versa
            hit = bool(rx.match(rel)) or any(rx.match(p) for p in parents)
            if hit:
                matched = not exception
        return matched
