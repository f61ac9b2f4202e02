"""The Dockerfile subset vmmd builds (docs/images.md): Docker's syntax (comments, `\\`
continuations, the `# escape=` directive, shell and JSON exec forms, variable substitution in the
instructions Docker substitutes in) and Docker's semantics for the image config, for one stage.

`parse(text, build_args)` returns a frozen `Dockerfile`: `base` (the FROM reference), the ordered
`steps` (each with its line, kind, canonical text for cache keys, its parsed operation and the
env/workdir/user it runs with) and the final `config`. Pure Python: nothing here runs anything.
The base image's own config changes what `ENV PATH=/app:$PATH` means, so once the base is pulled,
`dockerfile.with_base(config)` evaluates the same text again on top of it."""
from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from dataclasses import dataclass, field

from vmmd.errors import InvalidArgument
from vmmd.images.shellwords import expand, expand_words, split_words

SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "LABEL",
             "ENTRYPOINT", "CMD", "HEALTHCHECK")
# Docker's other instructions: named so the refusal says "not supported" instead of "unknown"
KNOWN_UNSUPPORTED = ("ONBUILD", "STOPSIGNAL", "SHELL", "VOLUME", "MAINTAINER")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# usable without an ARG line and not reported as unused (Docker's predefined ARGs)
PREDEFINED_ARGS = frozenset(p for n in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY",
                                        "ALL_PROXY") for p in (n, n.lower()))
MAX_EXPOSED = 1024          # a range like 1-65535 would make a config nobody wants to serve
SHELL = ("/bin/sh", "-c")


class DockerfileError(InvalidArgument):
    def __init__(self, line: int, message: str):
        super().__init__(f"Dockerfile line {line}: {message}")
        self.line = line
        self.message = message


# ---- what a parse returns --------------------------------------------------------------------

@dataclass(frozen=True)
class Healthcheck:
    test: tuple[str, ...]           # ("NONE",), ("CMD", argv...) or ("CMD-SHELL", command)
    interval: float = 30.0          # seconds; Docker's defaults filled in
    timeout: float = 30.0
    start_period: float = 0.0
    start_interval: float = 5.0
    retries: int = 3


@dataclass(frozen=True)
class ImageConfig:
    """An OCI image config's runtime part, as Docker computes it after the last instruction."""
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = ""
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    exposed_ports: tuple[str, ...] = ()         # "80/tcp", sorted
    labels: tuple[tuple[str, str], ...] = ()    # sorted by key
    healthcheck: Healthcheck | None = None

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


SCRATCH = ImageConfig(env=(("PATH", DEFAULT_PATH),))     # BuildKit's config for FROM scratch


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]           # shell form is ("/bin/sh", "-c", text)
    shell: bool


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]        # context-relative patterns, substituted
    dest: str                       # absolute in the image (relative dests resolved on WORKDIR)
    # ends with "/" (or is "."), or several sources: copy into it. A dest that already is a
    # directory in the image is copied into as well (Docker's rule), which only the builder sees
    dest_is_dir: bool
    chown: str | None               # "user[:group]", substituted; None: root
    chmod: int | None
    add: bool                       # ADD: a local tar archive source is extracted (not copied)


@dataclass(frozen=True)
class SetEnv:
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SetArg:
    pairs: tuple[tuple[str, str | None], ...]   # the value in effect (None: unset)


@dataclass(frozen=True)
class Workdir:
    path: str                       # absolute; the builder creates it (Docker does)


@dataclass(frozen=True)
class User:
    user: str


@dataclass(frozen=True)
class Expose:
    ports: tuple[str, ...]


@dataclass(frozen=True)
class Label:
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Entrypoint:
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Cmd:
    argv: tuple[str, ...]


@dataclass(frozen=True)
class SetHealthcheck:
    healthcheck: Healthcheck


Op = Run | Copy | SetEnv | SetArg | Workdir | User | Expose | Label | Entrypoint | Cmd | \
    SetHealthcheck


@dataclass(frozen=True)
class Step:
    line: int
    kind: str                       # the instruction, upper case
    text: str                       # as written (continuations joined)
    canonical: str                  # what the step's cache key hashes (stepcache.step_key)
    op: Op
    # what a RUN runs with (for other kinds, the state in effect after the step): the image's
    # env plus the ARGs in scope (ENV wins over ARG; PATH defaulted as BuildKit does)
    env: tuple[tuple[str, str], ...]
    workdir: str
    user: str

    @property
    def changes_files(self) -> bool:
        """RUN, COPY, ADD and WORKDIR (which creates its directory) make a layer."""
        return self.kind in ("RUN", "COPY", "ADD", "WORKDIR")


@dataclass(frozen=True)
class Dockerfile:
    base: str                       # the FROM reference, ARG-substituted ("scratch" allowed)
    base_name: str | None           # FROM ... AS name
    platform: str | None            # FROM --platform=...
    steps: tuple[Step, ...]
    config: ImageConfig
    warnings: tuple[str, ...]       # unused build args, exec forms that are not JSON
    source: str = field(repr=False, default="")
    build_args: tuple[tuple[str, str], ...] = field(repr=False, default=())

    def with_base(self, base: ImageConfig) -> "Dockerfile":
        """The same Dockerfile evaluated on top of the pulled base image's config."""
        return parse(self.source, dict(self.build_args), base=base)


# ---- syntax: lines to instructions ----------------------------------------------------------

@dataclass
class _Instr:
    line: int
    keyword: str                    # upper case
    rest: str                       # arguments, stripped
    text: str


_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_HEREDOC = re.compile(r"<<-?\s*[\"']?[A-Za-z_][A-Za-z0-9_]*[\"']?")


def _directives(lines: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for i, raw in enumerate(lines, 1):
        m = _DIRECTIVE.match(raw.strip())
        if not m:
            break
        key = m.group(1).lower()
        if key in found:
            raise DockerfileError(i, f"only one {key} parser directive can be used")
        found[key] = m.group(2)
    return found


def _instructions(text: str) -> tuple[list[_Instr], str]:
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").split("\n")     # BOM, CRLF: as Docker
    directives = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise DockerfileError(1, f"invalid escape token {escape!r}: it must be \\ or `")
    cont = re.compile(re.escape(escape) + r"[ \t]*$")
    out: list[_Instr] = []
    i = 0
    while i < len(lines):
        start = i + 1
        line = lines[i].lstrip()
        i += 1
        if not line or line.startswith("#"):
            continue
        joined, more = cont.subn("", line)
        while more and i < len(lines):
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):
                continue                    # comments inside a continuation are dropped
            if not nxt.strip():
                continue                    # so are empty lines (Docker warns)
            part, more = cont.subn("", nxt)
            joined += part
        m = re.match(r"(\S+)\s*(.*)$", joined.strip(), re.S)
        if not m:
            continue
        out.append(_Instr(start, m.group(1).upper(), m.group(2).strip(), joined.strip()))
    return out, escape


def _flags(ins: _Instr, allowed: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """Leading `--name=value` flags; any other flag is refused with the ones allowed."""
    flags: dict[str, str] = {}
    rest = ins.rest
    while rest.startswith("--"):
        tok, _, after = rest.partition(" ")
        rest = after.strip()
        if tok == "--":
            break
        name, eq, value = tok[2:].partition("=")
        if name not in allowed:
            ok = ", ".join("--" + a for a in allowed) or "no flags"
            raise DockerfileError(ins.line, f"{ins.keyword} --{name} is not supported; "
                                  f"{ins.keyword} takes {ok}")
        if not eq:
            raise DockerfileError(ins.line, f"{ins.keyword} --{name} needs a value "
                                  f"(--{name}=...)")
        if name in flags:
            raise DockerfileError(ins.line, f"{ins.keyword} --{name} given twice")
        flags[name] = value
    return flags, rest


def _exec_or_shell(ins: _Instr, rest: str, warnings: list[str]) -> tuple[tuple[str, ...], bool]:
    """(argv, True) for the shell form, (argv, False) for the JSON exec form."""
    if rest.startswith("["):
        try:
            v = json.loads(rest)
        except ValueError:
            v = None
        if isinstance(v, list) and all(isinstance(a, str) for a in v):
            return tuple(v), False
        warnings.append(f"line {ins.line}: {ins.keyword} starts with '[' but is not a JSON array "
                        "of strings, so it runs as a shell command (JSON needs double quotes)")
    return SHELL + (rest,), True


# ---- evaluation ------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


def _duration(ins: _Instr, flag: str, text: str) -> float:
    """Go's time.ParseDuration, as Docker reads --interval=1m30s."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise DockerfileError(ins.line, f"HEALTHCHECK --{flag}={text}: not a duration "
                              "(write it like 30s, 1m30s or 500ms)")
    return total


def _port_specs(ins: _Instr, words: list[str]) -> list[str]:
    ports: list[str] = []
    for w in words:
        spec, _, proto = w.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in ("tcp", "udp"):
            raise DockerfileError(ins.line, f"EXPOSE {w}: the protocol must be tcp or udp")
        if ":" in spec:
            raise DockerfileError(ins.line, f"EXPOSE {w}: EXPOSE takes container ports only; "
                                  "publishing to a host port is the session's business")
        lo, dash, hi = spec.partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise DockerfileError(ins.line, f"EXPOSE {w}: not a port number") from None
        if not (1 <= a <= b <= 65535):
            raise DockerfileError(ins.line, f"EXPOSE {w}: ports go from 1 to 65535 and a range "
                                  "from low to high")
        if b - a + 1 > MAX_EXPOSED:
            raise DockerfileError(ins.line, f"EXPOSE {w}: a range is expanded into one port each, "
                                  f"at most {MAX_EXPOSED}")
        ports += [f"{p}/{proto}" for p in range(a, b + 1)]
    return ports


def _port_key(p: str) -> tuple[int, str]:
    n, _, proto = p.partition("/")
    return int(n), proto


def _canon(*parts: object) -> str:
    return json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _Eval:
    def __init__(self, build_args: dict[str, str], base: ImageConfig | None, escape: str):
        self.build_args = dict(build_args)
        self.used_args: set[str] = set()
        self.escape = escape
        self.warnings: list[str] = []
        self.global_args: dict[str, str | None] = {}
        self.args: dict[str, str | None] = {}     # declared in the stage, in order
        self.start(base or ImageConfig())

    def start(self, base: ImageConfig) -> None:
        """FROM: the config and variables start from the base image's."""
        self.cfg = {f.name: getattr(base, f.name) for f in dataclasses.fields(ImageConfig)}
        self.env: dict[str, str] = dict(base.env)
        self.labels: dict[str, str] = dict(base.labels)
        self.ports: set[str] = set(base.exposed_ports)
        self.cmd_set = False
        self.steps: list[Step] = []

    # variables a substitution sees: the ARGs in scope with values, then ENV over them
    def scope(self) -> dict[str, str]:
        s = {k: v for k, v in self.args.items() if v is not None}
        s.update(self.env)
        return s

    def run_env(self) -> tuple[tuple[str, str], ...]:
        env = dict(self.env)
        for k, v in self.args.items():
            if v is not None and k not in env:
                env[k] = v
        for k in PREDEFINED_ARGS & self.build_args.keys():
            env.setdefault(k, self.build_args[k])
        env.setdefault("PATH", DEFAULT_PATH)
        return tuple(env.items())

    def word(self, ins: _Instr, text: str) -> str:
        try:
            return expand(text, self.scope(), self.escape)
        except ValueError as e:
            raise DockerfileError(ins.line, f"{ins.keyword}: {e}") from None

    def words(self, ins: _Instr, text: str) -> list[str]:
        try:
            return expand_words(text, self.scope(), self.escape)
        except ValueError as e:
            raise DockerfileError(ins.line, f"{ins.keyword}: {e}") from None

    def pairs(self, ins: _Instr, rest: str) -> list[tuple[str, str]]:
        """`k=v k2="v 2"`, or the legacy `k value with spaces`; substituted with the variables
        in effect before the instruction (as Docker does for one ENV line)."""
        scope_words = split_words(rest, self.escape)
        if not scope_words:
            raise DockerfileError(ins.line, f"{ins.keyword} requires at least one argument")
        if "=" not in scope_words[0]:
            parts = rest.split(None, 1)
            if len(parts) < 2:
                raise DockerfileError(ins.line, f"{ins.keyword} {parts[0]}: needs a value "
                                      f"({ins.keyword} {parts[0]}=value)")
            return [(self.word(ins, parts[0]), self.word(ins, parts[1]))]
        out = []
        for w in scope_words:
            k, eq, v = w.partition("=")
            if not eq:
                raise DockerfileError(ins.line, f"{ins.keyword}: can't find = in {w!r}; it must "
                                      "be of the form name=value")
            k = self.word(ins, k)
            if not k:
                raise DockerfileError(ins.line, f"{ins.keyword} names can not be blank")
            out.append((k, self.word(ins, v)))
        return out

    def add(self, ins: _Instr, op: Op, canonical: str) -> None:
        self.steps.append(Step(ins.line, ins.keyword, ins.text, canonical, op, self.run_env(),
                               self.cfg["workdir"], self.cfg["user"]))

    def arg_value(self, name: str, default: str | None, globals_: bool) -> str | None:
        if name in self.build_args:
            self.used_args.add(name)
            return self.build_args[name]
        if default is not None:
            return default
        if not globals_ and name in self.global_args:
            return self.global_args[name]       # `ARG X` in the stage imports a global X
        return None

    def arg(self, ins: _Instr, globals_: bool) -> list[tuple[str, str | None]]:
        out = []
        for w in split_words(ins.rest, self.escape):
            name, eq, default = w.partition("=")
            if not _NAME.match(name):
                raise DockerfileError(ins.line, f"ARG {name!r}: a name is letters, digits and _")
            value = self.arg_value(name, self.word(ins, default) if eq else None, globals_)
            (self.global_args if globals_ else self.args)[name] = value
            out.append((name, value))
        if not out:
            raise DockerfileError(ins.line, "ARG requires at least one argument")
        return out

    # one method per instruction ---------------------------------------------------------------
    def RUN(self, ins: _Instr) -> None:
        flags, rest = _flags(ins, ())
        if not rest:
            raise DockerfileError(ins.line, "RUN requires at least one argument")
        argv, shell = _exec_or_shell(ins, rest, self.warnings)
        args = sorted((k, v) for k, v in self.args.items() if v is not None)
        self.add(ins, Run(argv, shell), _canon("RUN", argv, args))

    def COPY(self, ins: _Instr, add: bool = False) -> None:
        flags, rest = _flags(ins, ("chown", "chmod"))
        if rest.startswith("["):
            try:
                v = json.loads(rest)
            except ValueError:
                v = None
            if not (isinstance(v, list) and all(isinstance(a, str) for a in v)):
                raise DockerfileError(ins.line, f"{ins.keyword}: not a JSON array of strings")
            args = [self.word(ins, a) for a in v]
        else:
            args = [self.word(ins, a) for a in rest.split()]
        if len(args) < 2:
            raise DockerfileError(ins.line, f"{ins.keyword} requires at least two arguments, "
                                  "sources and a destination")
        *sources, dest = args
        for s in sources:
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) or s.startswith("git@"):
                raise DockerfileError(ins.line, f"{ins.keyword} {s}: sources from URLs are not "
                                      "supported; put the file in the context zip")
            norm = posixpath.normpath(s.lstrip("/") or ".")
            if norm == ".." or norm.startswith("../"):
                raise DockerfileError(ins.line, f"{ins.keyword} {s}: outside the build context")
        dest_is_dir = (dest.endswith("/") or len(sources) > 1
                       or posixpath.basename(dest) in (".", ".."))
        if len(sources) > 1 and not dest.endswith("/"):
            raise DockerfileError(ins.line, f"when using {ins.keyword} with more than one "
                                  f"source file, the destination must be a directory and end "
                                  f"with a / ({dest} -> {dest}/)")
        absolute = posixpath.normpath(posixpath.join(self.cfg["workdir"], dest))
        chown = self.word(ins, flags["chown"]) if "chown" in flags else None
        chmod = None
        if "chmod" in flags:
            if not re.fullmatch(r"[0-7]{3,4}", flags["chmod"]):
                raise DockerfileError(ins.line, f"{ins.keyword} --chmod={flags['chmod']}: "
                                      "vmmd takes octal modes like 755")
            chmod = int(flags["chmod"], 8)
        op = Copy(tuple(sources), absolute, dest_is_dir, chown, chmod, add)
        self.add(ins, op, _canon(ins.keyword, op.sources, op.dest, op.dest_is_dir, chown, chmod))

    def ADD(self, ins: _Instr) -> None:
        self.COPY(ins, add=True)

    def ENV(self, ins: _Instr) -> None:
        pairs = self.pairs(ins, ins.rest)
        for k, v in pairs:
            self.env.pop(k, None)       # a redefined variable moves to the end, as in Docker
            self.env[k] = v
        self.cfg["env"] = tuple(self.env.items())
        self.add(ins, SetEnv(tuple(pairs)), _canon("ENV", pairs))

    def ARG(self, ins: _Instr) -> None:
        pairs = self.arg(ins, globals_=False)
        self.add(ins, SetArg(tuple(pairs)), _canon("ARG", [k for k, _ in pairs]))

    def WORKDIR(self, ins: _Instr) -> None:
        path = self.word(ins, ins.rest)
        if not path:
            raise DockerfileError(ins.line, "WORKDIR requires at least one argument")
        self.cfg["workdir"] = posixpath.normpath(posixpath.join(self.cfg["workdir"], path))
        if self.cfg["workdir"].startswith("//"):
            self.cfg["workdir"] = "/" + self.cfg["workdir"].lstrip("/")
        self.add(ins, Workdir(self.cfg["workdir"]), _canon("WORKDIR", self.cfg["workdir"]))

    def USER(self, ins: _Instr) -> None:
        user = self.word(ins, ins.rest)
        if not user or len(user.split()) != 1:
            raise DockerfileError(ins.line, "USER takes one user[:group]")
        self.cfg["user"] = user
        self.add(ins, User(user), _canon("USER", user))

    def EXPOSE(self, ins: _Instr) -> None:
        ports = _port_specs(ins, self.words(ins, ins.rest))
        if not ports:
            raise DockerfileError(ins.line, "EXPOSE requires at least one argument")
        self.ports.update(ports)
        if len(self.ports) > MAX_EXPOSED:
            raise DockerfileError(ins.line, f"EXPOSE: at most {MAX_EXPOSED} ports in an image")
        self.cfg["exposed_ports"] = tuple(sorted(self.ports, key=_port_key))
        self.add(ins, Expose(tuple(ports)), _canon("EXPOSE", ports))

    def LABEL(self, ins: _Instr) -> None:
        pairs = self.pairs(ins, ins.rest)
        self.labels.update(pairs)
        self.cfg["labels"] = tuple(sorted(self.labels.items()))
        self.add(ins, Label(tuple(pairs)), _canon("LABEL", pairs))

    def ENTRYPOINT(self, ins: _Instr) -> None:
        if not ins.rest:
            raise DockerfileError(ins.line, "ENTRYPOINT requires at least one argument")
        argv, _ = _exec_or_shell(ins, ins.rest, self.warnings)
        self.cfg["entrypoint"] = argv
        if not self.cmd_set:
            self.cfg["cmd"] = None      # a CMD inherited from the base is dropped, as Docker does
        self.add(ins, Entrypoint(argv), _canon("ENTRYPOINT", argv))

    def CMD(self, ins: _Instr) -> None:
        if not ins.rest:
            raise DockerfileError(ins.line, "CMD requires at least one argument")
        argv, _ = _exec_or_shell(ins, ins.rest, self.warnings)
        self.cfg["cmd"] = argv
        self.cmd_set = True
        self.add(ins, Cmd(argv), _canon("CMD", argv))

    def HEALTHCHECK(self, ins: _Instr) -> None:
        flags, rest = _flags(ins, ("interval", "timeout", "start-period", "start-interval",
                                   "retries"))
        kind, _, cmd = rest.partition(" ")
        kind, cmd = kind.upper(), cmd.strip()
        if kind == "NONE":
            if cmd or flags:
                raise DockerfileError(ins.line, "HEALTHCHECK NONE takes no arguments")
            hc = Healthcheck(("NONE",))
        elif kind == "CMD":
            if not cmd:
                raise DockerfileError(ins.line, "HEALTHCHECK CMD needs a command")
            argv, shell = _exec_or_shell(ins, cmd, self.warnings)
            test = ("CMD-SHELL", cmd) if shell else ("CMD",) + argv
            times = {}
            for f in ("interval", "timeout", "start-period", "start-interval"):
                if f in flags:
                    t = _duration(ins, f, flags[f])
                    if t and t < 0.001:
                        raise DockerfileError(ins.line, f"HEALTHCHECK --{f}: at least 1ms")
                    if t:
                        times[f.replace("-", "_")] = t
            retries = 3
            if "retries" in flags:
                if not re.fullmatch(r"\d+", flags["retries"]):
                    raise DockerfileError(ins.line, "HEALTHCHECK --retries: a whole number, "
                                          "not negative")
                retries = int(flags["retries"]) or 3
            hc = Healthcheck(test, retries=retries, **times)
        else:
            raise DockerfileError(ins.line, f"unknown type {kind or '(none)'} in HEALTHCHECK "
                                  "(HEALTHCHECK [options] CMD command, or HEALTHCHECK NONE)")
        self.cfg["healthcheck"] = hc
        self.add(ins, SetHealthcheck(hc), _canon("HEALTHCHECK", dataclasses.asdict(hc)))

    def config(self) -> ImageConfig:
        return ImageConfig(**self.cfg)


def parse(text: str, build_args: dict[str, str] | None = None, *,
          base: ImageConfig | None = None) -> Dockerfile:
    """Parse and evaluate a one-stage Dockerfile. `base` is the FROM image's config (None: empty,
    or SCRATCH's for `FROM scratch`); build args override ARG defaults, and ones no ARG declares
    come back in `warnings`. Raises DockerfileError(line, message)."""
    build_args = dict(build_args or {})
    instrs, escape = _instructions(text)
    ev = _Eval(build_args, base, escape)
    from_: tuple[str, str | None, str | None] | None = None
    for ins in instrs:
        kw = ins.keyword
        if kw not in SUPPORTED:
            what = "is not supported" if kw in KNOWN_UNSUPPORTED else "is an unknown instruction"
            raise DockerfileError(ins.line, f"{kw} {what}; vmmd supports "
                                  f"{', '.join(SUPPORTED)}")
        if kw in ("RUN", "COPY", "ADD") and _HEREDOC.search(ins.rest):
            raise DockerfileError(ins.line, f"{kw}: heredocs (<<EOF) are not supported; put the "
                                  "script in the context and COPY it, or use one line with &&")
        if from_ is None:
            if kw == "ARG":
                ev.arg(ins, globals_=True)
                continue
            if kw != "FROM":
                raise DockerfileError(ins.line, f"{kw} before FROM: a Dockerfile starts with FROM "
                                      "(only ARG may come before it)")
            from_ = _from(ins, ev, base)
            continue
        if kw == "FROM":
            raise DockerfileError(ins.line, "a second FROM: multi-stage builds are not supported "
                                  "yet; build one stage")
        getattr(ev, kw)(ins)
    if from_ is None:
        raise DockerfileError(max(1, len(text.splitlines())), "no FROM instruction; a Dockerfile "
                              "starts with FROM image (or FROM scratch)")
    unused = sorted(set(build_args) - ev.used_args - PREDEFINED_ARGS)
    warnings = list(ev.warnings)
    if unused:
        warnings.append(f"build args not consumed by any ARG: {', '.join(unused)}")
    return Dockerfile(from_[0], from_[1], from_[2], tuple(ev.steps), ev.config(),
                      tuple(warnings), text, tuple(sorted(build_args.items())))


def _from(ins: _Instr, ev: _Eval, base: ImageConfig | None) -> tuple[str, str | None, str | None]:
    flags, rest = _flags(ins, ("platform",))
    globals_ = {k: v for k, v in ev.global_args.items() if v is not None}
    try:
        words = [expand(w, globals_, ev.escape) for w in rest.split()]
    except ValueError as e:
        raise DockerfileError(ins.line, f"FROM: {e}") from None
    platform = expand(flags["platform"], globals_, ev.escape) if "platform" in flags else None
    if len(words) == 3 and words[1].lower() == "as":
        name: str | None = words[2]
    elif len(words) == 1:
        name = None
    else:
        raise DockerfileError(ins.line, "FROM takes an image and optionally AS name "
                              "(FROM python:3.12 AS app)")
    ref = words[0]
    if not ref:
        raise DockerfileError(ins.line, "FROM: the image reference is empty after substitution")
    ev.start(base if base is not None else SCRATCH if ref == "scratch" else ImageConfig())
    return ref, name, platform
