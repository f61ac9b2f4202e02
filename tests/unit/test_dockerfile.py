"""The Dockerfile subset (vmmd/images/dockerfile.py): Docker's syntax, substitution, the config
Docker computes, each refusal with its line, and step-cache keys (vmmd/images/stepcache.py)."""
import pytest

from vmmd.errors import InvalidArgument
from vmmd.images.dockerfile import (DEFAULT_PATH, SUPPORTED, Copy, DockerfileError, Healthcheck,
                                    ImageConfig, Run, parse)
from vmmd.images.shellwords import expand, expand_words
from vmmd.images.stepcache import step_key

FLASK = """\
# syntax=docker/dockerfile:1
ARG PYTHON=3.12
FROM python:${PYTHON}-slim

ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1
WORKDIR /app

COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt \\
 && useradd --create-home app

COPY --chown=app:app . .
USER app
EXPOSE 8000
LABEL org.opencontainers.image.title="hello flask"
HEALTHCHECK --interval=10s --timeout=3s \\
  CMD python -c "import urllib.request; urllib.request.urlopen('http://localhost:8000/')"
ENTRYPOINT ["gunicorn"]
CMD ["-b", "0.0.0.0:8000", "app:app"]
"""


def one(text, **kw):
    """The single step of `FROM scratch` + text."""
    df = parse("FROM scratch\n" + text, **kw)
    assert len(df.steps) == 1
    return df.steps[0]


def refused(text, build_args=None):
    with pytest.raises(DockerfileError) as e:
        parse(text, build_args)
    return e.value


# ---- a Dockerfile as users write them ----------------------------------------------------------

def test_flask_dockerfile_gives_docker_s_steps_and_config():
    df = parse(FLASK, {"PYTHON": "3.11"})
    assert df.base == "python:3.11-slim"
    assert [(s.line, s.kind) for s in df.steps] == [
        (5, "ENV"), (7, "WORKDIR"), (9, "COPY"), (10, "RUN"), (13, "COPY"), (14, "USER"),
        (15, "EXPOSE"), (16, "LABEL"), (17, "HEALTHCHECK"), (19, "ENTRYPOINT"), (20, "CMD")]
    run = df.steps[3]
    assert run.op == Run(("/bin/sh", "-c", "pip install --no-cache-dir -r requirements.txt  "
                          "&& useradd --create-home app"), shell=True)
    assert run.workdir == "/app" and run.user == ""
    assert ("PYTHONUNBUFFERED", "1") in run.env
    copy = df.steps[4].op
    assert copy == Copy((".",), "/app", True, "app:app", None, False)
    c = df.config
    assert c.env == (("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1"))
    assert (c.workdir, c.user) == ("/app", "app")
    assert c.entrypoint == ("gunicorn",)
    assert c.cmd == ("-b", "0.0.0.0:8000", "app:app")
    assert c.exposed_ports == ("8000/tcp",)
    assert c.labels == (("org.opencontainers.image.title", "hello flask"),)
    assert c.healthcheck.test[0] == "CMD-SHELL"
    assert "urlopen('http://localhost:8000/')" in c.healthcheck.test[1]
    assert (c.healthcheck.interval, c.healthcheck.timeout, c.healthcheck.retries) == (10, 3, 3)
    assert df.warnings == ()


def test_flask_dockerfile_on_its_base_keeps_the_base_path_and_drops_its_cmd():
    base = ImageConfig(env=(("PATH", "/usr/local/bin:/usr/bin:/bin"), ("LANG", "C.UTF-8")),
                       cmd=("python3",))
    df = parse(FLASK).with_base(base)
    assert df.config.env[:2] == base.env
    assert df.config.cmd == ("-b", "0.0.0.0:8000", "app:app")
    df2 = parse("FROM python\nENV PATH=/app/bin:$PATH\nENTRYPOINT [\"x\"]\n", base=base)
    assert df2.config.env_dict()["PATH"] == "/app/bin:/usr/local/bin:/usr/bin:/bin"
    assert df2.config.cmd is None       # ENTRYPOINT drops a CMD inherited from the base


# ---- syntax ------------------------------------------------------------------------------------

def test_comments_blank_lines_and_continuations_join_as_docker_does():
    df = parse("FROM scratch\n\n# c\nRUN echo a \\\n  # inside\n\n  b\\\n c\n")
    assert df.steps[0].op.argv[2] == "echo a   b c"
    assert df.steps[0].line == 4


def test_keywords_are_case_insensitive():
    df = parse("from scratch\nrun true\nWorkDir /x\n")
    assert [s.kind for s in df.steps] == ["RUN", "WORKDIR"]


def test_escape_directive_makes_backtick_the_continuation_and_escape():
    df = parse("# escape=`\nFROM scratch\nRUN dir c:\\ `\n  && echo\nENV A=`$B\n")
    assert df.steps[0].op.argv[2] == "dir c:\\   && echo"
    assert df.config.env_dict()["A"] == "$B"


def test_a_bad_escape_directive_is_refused():
    assert "escape" in refused("# escape=x\nFROM scratch\n").message


def test_a_directive_after_a_comment_is_only_a_comment():
    df = parse("# hello\n# escape=`\nFROM scratch\nRUN a \\\n b\n")
    assert df.steps[0].op.argv[2] == "a  b"


def test_exec_and_shell_forms_of_run_cmd_entrypoint():
    assert one('RUN ["echo", "a b"]').op == Run(("echo", "a b"), shell=False)
    assert one("RUN echo $HOME").op == Run(("/bin/sh", "-c", "echo $HOME"), shell=True)
    assert parse("FROM scratch\nCMD python app.py").config.cmd == ("/bin/sh", "-c",
                                                                    "python app.py")
    assert parse("FROM scratch\nENTRYPOINT [\"/app\"]").config.entrypoint == ("/app",)
    assert parse("FROM scratch\nCMD []").config.cmd == ()


def test_run_does_not_substitute_variables():
    df = parse("FROM scratch\nARG X=1\nRUN echo $X ${X}\n")
    assert df.steps[1].op.argv[2] == "echo $X ${X}"
    assert ("X", "1") in df.steps[1].env


def test_broken_json_runs_as_shell_form_with_a_warning():
    df = parse("FROM scratch\nCMD ['python', 'app.py']\n")
    assert df.config.cmd == ("/bin/sh", "-c", "['python', 'app.py']")
    assert "line 2" in df.warnings[0] and "JSON" in df.warnings[0]


def test_heredocs_are_refused_with_their_line():
    e = refused("FROM scratch\nRUN <<EOF\necho hi\nEOF\n")
    assert e.line == 2 and "heredoc" in e.message


# ---- instructions --------------------------------------------------------------------------

def test_copy_forms_flags_and_destinations():
    df = parse("FROM scratch\nWORKDIR /srv\nCOPY --chown=1000:1000 --chmod=640 a b dir/\n"
               'COPY ["with space.txt", "rel"]\nCOPY x /abs\n')
    assert df.steps[1].op == Copy(("a", "b"), "/srv/dir", True, "1000:1000", 0o640, False)
    assert df.steps[2].op == Copy(("with space.txt",), "/srv/rel", False, None, None, False)
    assert df.steps[3].op.dest == "/abs" and not df.steps[3].op.dest_is_dir


def test_copy_of_several_sources_needs_a_directory_destination():
    e = refused("FROM scratch\nCOPY a b /dst\n")
    assert e.line == 2 and "end with a /" in e.message


def test_copy_needs_a_destination_and_stays_in_the_context():
    assert "two arguments" in refused("FROM scratch\nCOPY a\n").message
    assert "outside the build context" in refused("FROM scratch\nCOPY ../secret /x\n").message


def test_copy_from_another_stage_is_refused():
    e = refused("FROM scratch\nCOPY --from=builder /a /b\n")
    assert "--from is not supported" in e.message and "--chown" in e.message


def test_add_records_that_local_archives_are_extracted_and_refuses_urls():
    assert one("ADD app.tar.gz /opt/").op.add is True
    e = refused("FROM scratch\n\nADD https://example.invalid/x.tgz /opt/\n")
    assert e.line == 3 and "URL" in e.message


def test_env_both_forms_and_one_line_sees_the_values_before_it():
    df = parse("FROM scratch\nENV A=1\nENV A=2 B=$A C=\"x y\" D=a\\ b\nENV E hello  world\n")
    env = df.config.env_dict()
    assert (env["A"], env["B"], env["C"], env["D"], env["E"]) == ("2", "1", "x y", "a b",
                                                                   "hello  world")


def test_env_redefined_moves_to_the_end_like_docker():
    df = parse("FROM scratch\nENV A=1 B=2\nENV A=3\n")
    assert [k for k, _ in df.config.env] == ["PATH", "B", "A"]


def test_from_scratch_starts_with_buildkit_s_default_path():
    assert parse("FROM scratch\n").config.env == (("PATH", DEFAULT_PATH),)


def test_arg_defaults_build_args_and_env_over_arg():
    df = parse("FROM scratch\nARG A=def B\nARG C=$A-x\nENV A=env\nRUN true\nLABEL a=$A b=$B "
               "c=$C\n", {"B": "given"})
    labels = dict(df.config.labels)
    assert labels == {"a": "env", "b": "given", "c": "def-x"}
    assert dict(df.steps[3].env)["A"] == "env"
    assert "B" not in dict(df.config.env)       # ARGs are not persisted into the image
    assert dict(df.steps[3].env)["B"] == "given"


def test_global_arg_is_only_for_from_unless_redeclared():
    df = parse("ARG V=1\nARG W=2\nFROM img:$V\nARG W\nLABEL v=x$V w=$W\n")
    assert df.base == "img:1"
    assert dict(df.config.labels) == {"v": "x", "w": "2"}


def test_unknown_build_args_are_a_warning_not_an_error():
    df = parse("FROM scratch\nARG USED\n", {"USED": "1", "NOPE": "2", "http_proxy": "p"})
    assert df.warnings == ("build args not consumed by any ARG: NOPE",)


def test_proxy_build_args_reach_run_without_an_arg_line_and_stay_out_of_its_key():
    a = parse("FROM scratch\nRUN true\n", {"HTTP_PROXY": "http://p:3128"}).steps[0]
    b = parse("FROM scratch\nRUN true\n").steps[0]
    assert dict(a.env)["HTTP_PROXY"] == "http://p:3128"
    assert a.canonical == b.canonical


def test_workdir_is_relative_to_the_previous_one():
    df = parse("FROM scratch\nWORKDIR /a\nWORKDIR b/../c\nENV D=d\nWORKDIR $D\n")
    assert [s.op.path for s in df.steps if s.kind == "WORKDIR"] == ["/a", "/a/c", "/a/c/d"]
    assert df.config.workdir == "/a/c/d"


def test_user_is_substituted():
    assert parse("FROM scratch\nARG U=app\nUSER ${U}:staff\n").config.user == "app:staff"


def test_expose_forms_and_ranges_expand():
    df = parse("FROM scratch\nARG P=8080\nEXPOSE 80 $P/tcp 53/udp\nEXPOSE 9000-9002\n")
    assert df.config.exposed_ports == ("53/udp", "80/tcp", "8080/tcp", "9000/tcp", "9001/tcp",
                                       "9002/tcp")


@pytest.mark.parametrize("spec, words", [("80/sctp", "tcp or udp"), ("8080:80", "host port"),
                                         ("http", "not a port"), ("0", "1 to 65535"),
                                         ("1-65535", "at most")])
def test_expose_refuses_what_vmmd_cannot_expose(spec, words):
    e = refused(f"FROM scratch\nEXPOSE {spec}\n")
    assert e.line == 2 and words in e.message


def test_label_later_wins_and_keys_sort():
    df = parse('FROM scratch\nLABEL b=1 "a key"="v"\nLABEL b=2\n')
    assert df.config.labels == (("a key", "v"), ("b", "2"))


def test_cmd_before_entrypoint_survives_it():
    df = parse('FROM scratch\nCMD ["a"]\nENTRYPOINT ["e"]\n')
    assert (df.config.entrypoint, df.config.cmd) == (("e",), ("a",))


def test_healthcheck_exec_form_options_and_none():
    hc = parse('FROM scratch\nHEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2s '
               '--retries=5 CMD ["curl", "-f", "http://localhost/"]\n').config.healthcheck
    assert hc == Healthcheck(("CMD", "curl", "-f", "http://localhost/"), 90.0, 0.5, 2.0, 5.0, 5)
    assert parse("FROM scratch\nHEALTHCHECK NONE\n").config.healthcheck.test == ("NONE",)


@pytest.mark.parametrize("line, words", [
    ("HEALTHCHECK NONE CMD x", "takes no arguments"),
    ("HEALTHCHECK --interval=soon CMD x", "not a duration"),
    ("HEALTHCHECK --retries=-1 CMD x", "not negative"),
    ("HEALTHCHECK --shell=bash CMD x", "--shell is not supported"),
    ("HEALTHCHECK RUN x", "unknown type RUN"),
    ("HEALTHCHECK CMD", "needs a command")])
def test_healthcheck_refusals(line, words):
    e = refused(f"FROM scratch\n{line}\n")
    assert e.line == 2 and words in e.message


# ---- substitution ------------------------------------------------------------------------

@pytest.mark.parametrize("word, out", [
    ("$A", "a"), ("${A}", "a"), ("x${A}y", "xay"), ("$NOPE", ""), ("${NOPE:-d}", "d"),
    ("${EMPTY:-d}", "d"), ("${EMPTY-d}", ""), ("${A:-d}", "a"), ("${A:+alt}", "alt"),
    ("${NOPE:+alt}", ""), ("\\$A", "$A"), ("'$A'", "$A"), ('"$A b"', "a b"),
    ("${NOPE:-${A}x}", "ax"), ("$", "$"), ("a$", "a$"), ("$1", ""), ('"\\$A\\"q"', '$A"q')])
def test_substitution_as_docker_does_it(word, out):
    assert expand(word, {"A": "a", "EMPTY": ""}) == out


def test_substitution_errors_name_the_line():
    e = refused('FROM scratch\nENV X="${NOPE:?must be set}"\n')
    assert e.line == 2 and "must be set" in e.message
    assert "missing '}'" in refused("FROM scratch\nWORKDIR ${A\n").message
    assert "unsupported modifier" in refused("FROM scratch\nUSER ${A%%x}\n").message


def test_expanded_words_split_on_the_value_s_spaces():
    assert expand_words("$P 9", {"P": "80 443"}) == ["80", "443", "9"]
    assert expand_words('"$P" 9', {"P": "80 443"}) == ["80 443", "9"]


# ---- refusals ----------------------------------------------------------------------------

@pytest.mark.parametrize("instr", ["ONBUILD RUN x", "STOPSIGNAL SIGTERM", "SHELL [\"bash\"]",
                                   "VOLUME /data", "MAINTAINER me"])
def test_unsupported_instructions_are_refused_with_line_and_the_supported_list(instr):
    e = refused(f"FROM scratch\nRUN true\n\n{instr}\n")
    assert isinstance(e, InvalidArgument)
    assert e.line == 4
    assert str(e).startswith(f"Dockerfile line 4: {instr.split()[0]} is not supported")
    assert ", ".join(SUPPORTED) in e.message


def test_a_typo_is_an_unknown_instruction():
    e = refused("FROM scratch\nRUNN x\n")
    assert e.line == 2 and "RUNN is an unknown instruction" in e.message


def test_a_second_from_says_multi_stage_is_not_supported_yet():
    e = refused("FROM golang AS build\nRUN go build\nFROM scratch\nCOPY --from=build /a /a\n")
    assert e.line == 3 and "multi-stage builds are not supported yet" in e.message


def test_instructions_before_from_and_a_missing_from():
    assert refused("RUN x\nFROM scratch\n").line == 1
    assert "no FROM" in refused("# only a comment\n").message
    assert "AS name" in refused("FROM a b c d\n").message


def test_run_mount_is_refused():
    assert "RUN --mount is not supported" in refused("FROM s\nRUN --mount=type=cache x\n").message


def test_empty_instructions_are_refused():
    for instr in ("RUN", "CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER", "EXPOSE", "ARG"):
        e = refused(f"FROM scratch\n{instr}\n")
        assert e.line == 2, instr


def test_env_without_equals_in_a_later_pair_is_refused():
    assert "name=value" in refused("FROM scratch\nENV A=1 B\n").message


# ---- step keys ---------------------------------------------------------------------------

def test_run_key_is_parent_plus_text():
    a = parse("FROM scratch\nRUN make\n").steps[0]
    b = parse("FROM scratch\n\n# moved\nrun   make\n").steps[0]
    c = parse("FROM scratch\nRUN make all\n").steps[0]
    assert step_key("p", a) == step_key("p", b)
    assert step_key("p", a) != step_key("q", a)
    assert step_key("p", a) != step_key("p", c)


def test_run_key_changes_with_an_arg_value_in_scope():
    text = "FROM scratch\nARG V=1\nRUN make\n"
    assert step_key("p", parse(text).steps[1]) != step_key("p", parse(text, {"V": "2"}).steps[1])


def test_copy_key_takes_the_files_digest_and_needs_it():
    s = parse("FROM scratch\nCOPY . /app\n").steps[0]
    assert step_key("p", s, "sha256:a") != step_key("p", s, "sha256:b")
    with pytest.raises(ValueError):
        step_key("p", s)
    with pytest.raises(ValueError):
        step_key("p", parse("FROM scratch\nRUN x\n").steps[0], "sha256:a")


def test_metadata_steps_are_keyed():
    a = parse("FROM scratch\nENV A=1\n").steps[0]
    b = parse("FROM scratch\nENV A=2\n").steps[0]
    w = parse("FROM scratch\nWORKDIR /a\n").steps[0]
    assert len({step_key("p", a), step_key("p", b), step_key("p", w)}) == 3
    assert step_key("p", a).startswith("sha256:") and len(step_key("p", a)) == 71
