"""vmmctl: tables for people, JSON for scripts, exit codes that say what went wrong."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.daemon]


def ctl(daemon, *args, json_out=True):
    exe = os.path.join(os.path.dirname(sys.executable), "vmmctl")
    r = subprocess.run([exe, "--socket", daemon.sock, *(["--json"] if json_out else []), *args],
                       capture_output=True, text=True, timeout=60)
    return r.returncode, (json.loads(r.stdout) if json_out and r.stdout.strip() else r.stdout)


def test_vmmctl_drives_a_session_through_its_lifecycle(daemon, snapshots):
    rc, imgs = ctl(daemon, "images", "register", snapshots["counter"], "--debug-devices",
                   "--name", "counter")
    assert rc == 0 and imgs[0]["name"] == "counter"
    image = imgs[0]["id"]
    rc, vm = ctl(daemon, "launch", image, "--label", "who=ctl", "--max-idle", "600")
    assert rc == 0 and vm[0]["state"] == "MICROVM_STATE_RUNNING"
    vm_id = vm[0]["id"]
    rc, out = ctl(daemon, "suspend", vm_id)
    assert rc == 0 and out[0]["state"] == "MICROVM_STATE_SUSPENDED"
    rc, out = ctl(daemon, "resume", vm_id)
    assert rc == 0 and out[0]["state"] == "MICROVM_STATE_RUNNING"
    rc, out = ctl(daemon, "ls", "--label", "who=ctl")
    assert rc == 0 and [v["id"] for v in out] == [vm_id]
    rc, out = ctl(daemon, "host")
    assert rc == 0 and out["microvms_by_state"]["RUNNING"] == 1
    rc, table = ctl(daemon, "ls", json_out=False)
    assert rc == 0 and vm_id in table and "RUNNING" in table
    rc, out = ctl(daemon, "rm", vm_id)
    assert rc == 0 and out[0]["state"] == "MICROVM_STATE_TERMINATED"


def test_vmmctl_exit_codes_name_the_failure(daemon, counter_image):
    rc, out = ctl(daemon, "get", "vm-nope")
    assert rc == 3 and out["error"]["code"] == "NOT_FOUND"
    rc, out = ctl(daemon, "launch", counter_image.id, "--vcpus", "99")
    assert rc == 2 and "1..16" in out["error"]["message"]
    vm = daemon.launch(counter_image.id)
    rc, _ = ctl(daemon, "exec", vm.id, "true", json_out=False)
    assert rc == 4                                   # FAILED_PRECONDITION: no guest agent
