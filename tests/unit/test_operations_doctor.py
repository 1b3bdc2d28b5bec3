"""``enclave doctor`` on operational faults (issue 19), on hand-made observations: a service left by a
dead hub, two enforcers, a port held by a stranger, a stale OAuth secret, a nearly full disk, a stopped hub."""

from __future__ import annotations

import dataclasses

from hub import doctor
from hub.cli import main
from hub.services import ServiceProcess, belongs_to, wrapped
from tests.unit.test_firewall_doctor import HUB_PID, sound


def by_name(obs) -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.diagnose(obs)}


def test_a_running_hub_with_its_services_passes():
    checks = by_name(sound())
    assert all(checks[n].ok and not checks[n].warning for n in ("services", "enforcer", "oauth", "disk"))


def test_a_stale_exports_service_fails_and_is_named():
    obs = sound()
    stale = ServiceProcess("exports", 777, 1, 999, ports=(8082,))
    checks = by_name(dataclasses.replace(obs, services=(*obs.services, stale)))
    assert not checks["services"].ok
    assert "stale exports (pid 777 on port 8082, parent 1)" in checks["services"].reason
    assert "not started by the running hub" in checks["services"].reason


def test_a_service_without_the_wrapper_mark_but_another_parent_is_stale():
    obs = sound()
    old = ServiceProcess("enclave-gate", 778, 1, None, ports=(8081,))
    assert not by_name(dataclasses.replace(obs, services=(*obs.services, old)))["services"].ok


def test_two_enforcers_fail_the_enforcer_check():
    obs = sound()
    second = ServiceProcess("enclave-policy", 779, 1, 999)
    checks = by_name(dataclasses.replace(obs, services=(*obs.services, second)))
    assert not checks["enforcer"].ok and "2 policy enforcers run" in checks["enforcer"].reason


def test_a_missing_service_and_a_dead_port_fail():
    obs = sound()
    without_gate = tuple(s for s in obs.services if s.name != "enclave-gate")
    checks = by_name(
        dataclasses.replace(
            obs, services=without_gate, service_answers={"exports": "http://127.0.0.1:8082/: refused"}
        )
    )
    assert "enclave-gate is not running under the hub (pid 4242)" in checks["services"].reason
    assert "exports does not answer: http://127.0.0.1:8082/: refused" in checks["services"].reason


def test_a_port_held_by_a_stranger_fails():
    checks = by_name(sound(port_holders={8082: "pid 55 (python3 -m http.server 8082)"}))
    assert not checks["services"].ok and "port 8082 is held by pid 55" in checks["services"].reason


def test_a_stale_oauth_secret_fails():
    checks = by_name(
        sound(exports_oauth="the hub's token endpoint refuses the service's client: 401 invalid_client")
    )
    assert not checks["oauth"].ok and "invalid_client" in checks["oauth"].reason


def test_a_nearly_full_disk_warns_with_the_threshold():
    site = dataclasses.replace(sound().site, disk_min_free_mib=512)
    check = by_name(sound(site=site, free_bytes=100 * 1024 * 1024))["disk"]
    assert (
        check.ok
        and check.warning
        and "100 MiB free" in check.reason
        and "disk.min_free_mib (512 MiB)" in check.reason
    )
    assert check.line().startswith("WARN")


def test_warnings_only_exit_2_failures_exit_3(monkeypatch, tmp_path):
    monkeypatch.setattr(doctor, "observe", lambda paths: sound(free_bytes=1024))
    assert main(["--state-dir", str(tmp_path), "doctor"]) == doctor.EXIT_WARN == 2
    monkeypatch.setattr(doctor, "observe", lambda paths: sound(free_bytes=1024, exports_oauth="stale"))
    assert main(["--state-dir", str(tmp_path), "doctor"]) == doctor.EXIT_WEAK == 3


def test_no_hub_and_nothing_left_behind_is_a_warning_not_a_failure():
    checks = by_name(sound(hub_pid=None, services=(), service_answers={}))
    assert checks["services"].ok and checks["services"].warning and "not running" in checks["services"].reason
    left = ServiceProcess("exports", 780, 1, HUB_PID)
    checks = by_name(sound(hub_pid=None, services=(left,)))
    assert not checks["services"].ok and "no hub runs" in checks["services"].reason


def test_services_are_recognized_by_state_dir_or_hub_api(tmp_path):
    state = str(tmp_path)
    assert belongs_to({"JUPYTERHUB_SERVICE_NAME": "exports", "ENCLAVE_STATE_DIR": state}, state, 8091)
    assert not belongs_to(
        {"JUPYTERHUB_SERVICE_NAME": "exports", "ENCLAVE_STATE_DIR": "/elsewhere"}, state, 8091
    )
    assert belongs_to(
        {"JUPYTERHUB_SERVICE_NAME": "idle-culler", "JUPYTERHUB_API_URL": "http://127.0.0.1:8091/hub/api"},
        state,
        8091,
    )
    # A hub, a researcher's shell or another installation is never taken for a service.
    assert not belongs_to({"ENCLAVE_STATE_DIR": state}, state, 8091)
    assert not belongs_to({"JUPYTERHUB_SERVICE_NAME": "jupyterhub", "ENCLAVE_STATE_DIR": state}, state, 8091)


def test_the_wrapper_command_keeps_the_service_command():
    cmd = wrapped("exports", ["/usr/bin/python3", "-m", "exports.service"])
    assert cmd[1:5] == ["-m", "hub.services", "exports", "--"] and cmd[5:] == [
        "/usr/bin/python3",
        "-m",
        "exports.service",
    ]


def test_records_waiting_in_the_spool_are_a_warning():
    check = by_name(sound(spool_problems=("/state/audit/spool.bin: 2 record(s) spooled wait for space",)))[
        "disk"
    ]
    assert check.ok and check.warning and "2 record(s) spooled" in check.reason
