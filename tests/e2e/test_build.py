"""Image-then-launch inside the emulated x86_64 KVM host (tests/e2e/inhost_build.py drives it):
a Flask app's image built from a Dockerfile and a zip (base pulled from a registry on the
host's loopback, RUN steps in a build MicroVM), two sessions launched from its snapshot answer
HTTP, an unchanged rebuild runs no RUN step, a changed file reruns only the steps from its COPY,
and bad input is refused with no image left behind. The Debian base (python3, python3-flask)
is made here with mmdebstrap and cached (tests/images_support.py)."""
from __future__ import annotations

import pytest

from vmmd.images import initramfs, paths

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3200)]   # room for a rerun of the host


def test_flask_image_builds_launches_twice_and_caches_its_steps(testhost, tmp_path):
    import hosts
    from images_support import base_image
    layout = base_image("x86_64", ("python3", "python3-flask", "busybox"))  # the demo's too
    kernel, initrd = paths.guest_kernel("x86_64").image, initramfs.build("x86_64")
    checks, out, r = testhost("x86_64").script(
        hosts.ROOT / "tests" / "e2e" / "inhost_build.py", kernel, initrd, layout, "x86_64",
        what="build", timeout=1500, mem_mb=6144, keep=tmp_path,
        binds=[str(kernel.parent), str(initrd.parent), str(layout), str(tmp_path)])
    assert checks.get("done") == "True", out[-8000:] + r.console[-2000:]
    assert checks["first_build_ran_runs"] == "2"
    assert checks["sessions_answer"] == "True"
    assert checks["add_archive_unpacked"] == "True"
    assert checks["working_set"] == "True"
    assert checks["unchanged_rebuild_ran_runs"] == "0"
    assert checks["unchanged_same_digest"] == "True"
    assert checks["changed_rebuild_ran"] == "RUN=1,COPY=1"
    assert checks["changed_app_answers"] == "True"
    assert checks["bad_unknown_instruction"].startswith("refused:True:")
    assert "line 11" in checks["bad_unknown_instruction"] and "VOLUME" in \
        checks["bad_unknown_instruction"]
    assert checks["bad_copy_missing"].startswith("refused:True:") and \
        "missing.py" in checks["bad_copy_missing"]
    assert checks["bad_failing_run"].startswith("refused:True:") and \
        "exit status 1" in checks["bad_failing_run"] and "about to fail" in \
        checks["bad_failing_run"]
    assert checks["bad_zip_slip"].startswith("refused:True:")
    assert checks["bad_add_archive_escape"].startswith("refused:True:") and \
        "leaves the destination" in checks["bad_add_archive_escape"]
    assert "runner_status=0" in out
