"""Pseudonymized data as the containers see it: per-project pseudonyms, read-only, no keys."""

from __future__ import annotations

import json

import pytest

from ingest.publish import verify
from tests.harness import HubClient, py_exec

pytestmark = pytest.mark.integration

READ = """
import json, pandas as pd
person = pd.read_parquet('/data/synthetic-omop/person.parquet')
manifest = json.load(open('/data/synthetic-omop/manifest.json'))
print(json.dumps({"ids": sorted(map(str, person['person_id'])), "project": manifest['project'],
                  "columns": sorted(person.columns)}))
"""


@pytest.fixture(scope="module")
def both(hub):
    alice, bob = HubClient(hub, "alice"), HubClient(hub, "bob")
    for client, project in ((alice, "demo-cardio"), (bob, "demo-oncology")):
        assert client.login().status_code == 302
        client.spawn(project)
    yield hub.container("alice", "demo-cardio"), hub.container("bob", "demo-oncology")
    alice.stop("demo-cardio")
    bob.stop("demo-oncology")


def test_each_project_reads_its_own_pseudonyms(hub, both):
    seen = {}
    for container, project in zip(both, ("demo-cardio", "demo-oncology")):
        code, out = py_exec(container, READ)
        assert code == 0, out
        seen[project] = json.loads(out.strip().splitlines()[-1])
        assert seen[project]["project"] == project
        assert not {"person_source_value", "name", "rrn", "phone"} & set(seen[project]["columns"])
    cardio, oncology = set(seen["demo-cardio"]["ids"]), set(seen["demo-oncology"]["ids"])
    # demo-cardio's view is a cohort (persons with an I-code, then k = 5): fewer persons than oncology's.
    assert len(cardio) > 50 and len(oncology) > 100
    assert not cardio & oncology, "the same people must not share pseudonyms across projects"


def test_published_data_is_intact_and_keys_stay_on_the_host(hub, both):
    for project in ("demo-cardio", "demo-oncology"):
        assert verify(hub.state / "data" / project / "synthetic-omop" / "1") == []
    container = both[0]
    secrets = [p.read_bytes().strip() for p in (hub.state / "secrets").iterdir() if p.is_file()]
    assert any(b"master" in p.name.encode() for p in (hub.state / "secrets").iterdir()), (
        "ingest made a master key"
    )
    needles = [s[:32].hex() for s in secrets if len(s) >= 16]
    code, out = py_exec(
        container,
        f"""
import os
needles = [bytes.fromhex(n) for n in {needles!r}]
found = []
for top in ('/data', '/workspace', '/home', '/tmp', '/etc', '/run'):
    for d, _, fs in os.walk(top):
        for f in fs:
            try:
                data = open(os.path.join(d, f), 'rb').read(1 << 24)
            except OSError:
                continue
            if any(n in data for n in needles):
                found.append(os.path.join(d, f))
env = open('/proc/self/environ', 'rb').read()
print(found, any(n in env for n in needles))
""",
    )
    assert code == 0 and out.strip() == "[] False", out
    code, out = py_exec(
        container,
        """
for line in open('/proc/self/mountinfo'):
    fields = line.split()
    if fields[4] == '/data/synthetic-omop':
        print(fields[5])
""",
    )
    assert code == 0 and out.strip().split(",")[0] == "ro", (
        f"/data/synthetic-omop must be mounted read-only: {out}"
    )
    code, out = py_exec(container, "open('/data/synthetic-omop/person.parquet', 'wb')")
    assert code != 0 and ("Read-only file system" in out or "Permission denied" in out)
