"""Hidden payloads against the export door, end to end, as a hostile researcher would try them.

Inside alice's real demo-cardio container, as uid 1000, a script reads row-level data from /data and
hides it in outputs: PNG chunks, invisible characters, rows past a preview, Markdown that renders as
nothing, JSON that a parser reads differently from a person. Each is requested with ``enclave-export``.
Carol and dave then review through the real pages in Chromium, the release is downloaded as alice, and
every decoder the attacker would use is run on the downloaded bytes.

The outcome the adversary cares about is asserted for every variant: the request was refused (and the
refusal is on the audit trail), or the released bytes no longer carry the payload, or (for payloads that
are visible characters, such as base64 rows) every byte was shown to the checkers, flagged, and a checker
who follows the flags returns the request so nothing is released.
"""

from __future__ import annotations

import base64
import io
import json
import re
import struct
import zlib

import pytest

from audit import AuditLog
from tests.harness import HubClient, docker_exec, py_exec
from tests.integration.test_exports_flow import CHROMIUM_ARGS, checker_page, review

pytestmark = pytest.mark.integration

# --------------------------------------------------------------------------------------------------
# The attacker's script: runs in the container, as uid 1000, on the real /data.

BUILD = r"""
import base64, io, json, os, struct, zlib
os.environ.setdefault("MPLCONFIGDIR", "/tmp/mpl")
import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

rows = pq.read_table("/data/synthetic-omop/person.parquet").slice(0, 25)
out = io.BytesIO(); pq.write_table(rows, out, compression="zstd"); parquet = out.getvalue()
out = io.BytesIO(); pacsv.write_csv(rows.slice(0, 3), out); small = out.getvalue()[:240]
P = "/workspace/payloads/"
os.makedirs(P, exist_ok=True)
expected = {}

def save(name, data, payload):
    with open(P + name, "wb" if isinstance(data, bytes) else "w", **({} if isinstance(data, bytes) else {"encoding": "utf-8", "newline": ""})) as f:
        f.write(data)
    expected[name] = base64.b64encode(payload).decode()

def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

def chart():
    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    ax.bar(["A", "B", "C"], [120, 45, 30]); ax.set_title("Patients per group")
    buf = io.BytesIO(); fig.savefig(buf, format="png"); plt.close(fig)
    return buf.getvalue()

png = chart()
save("chart_private.png", png[:-12] + chunk(b"prVt", zlib.compress(parquet)) + png[-12:], parquet)
save("chart_ztxt.png", png[:-12] + chunk(b"zTXt", b"data\x00\x00" + zlib.compress(small)) + png[-12:], small)
save("chart_itxt.png", png[:-12] + chunk(b"iTXt", b"data\x00\x00\x00\x00\x00" + small) + png[-12:], small)
save("chart_tail.png", png + parquet, parquet)

harmless = "region,sex,n\n" + "".join(f"R{i % 17},{'FM'[i % 2]},{100 + i % 50}\n" for i in range(200))
bits = "".join(f"{b:08b}" for b in small)
save("notes_zw.md", "# Results\n\nThe cohort" + "".join("\u200b\u200c"[int(c)] for c in bits) + " had 120 people.\n", small)
save("notes_tags.txt", "All counts are above ten." + "".join(chr(0xE0000 + (b & 0x7F)) for b in small) + "\n", small)
save("notes_vs.md", "Results \u2764" + "".join(chr(0xFE00 + b) if b < 16 else chr(0xE0100 + b - 16) for b in small) + "\n", small)
save("notes_ws.txt", "".join(f"line {i}" + "".join(" \t"[int(c)] for c in f"{b:08b}") + "\n" for i, b in enumerate(small)), small)
lines = harmless.splitlines(keepends=True)
save("table_spaces.csv", lines[0] + "".join(
    line.replace(",", "," + " " * small[i], 1) for i, line in enumerate(lines[1:1 + len(small)])), small[:200])
save("table_bidi.csv", harmless + "R1,F,\u202e" + base64.b64encode(small[:9]).decode() + "\u202c\n", small[:9])

b64 = base64.b64encode(parquet).decode()
save("table_b64.csv", harmless + "".join(f"X{i},F,{b64[i * 60:(i + 1) * 60]}\n" for i in range(-(-len(b64) // 60))), parquet)
quads = [small[i:i + 4] for i in range(0, len(small) - 3, 4)]
save("table_digits.csv", "group,mean_age\n" + "".join(
    f"G{i},{50 + i % 9}.{''.join(f'{b:03d}' for b in q)}\n" for i, q in enumerate(quads)), b"".join(quads))
save("table_longcell.csv", harmless + f"X,F,{b64}\n", parquet)
save("table_multiline.csv", harmless + 'X,F,"120\n' + base64.encodebytes(small).decode() + '"\n', small)

save("md_comment.md", "# Table 1\n\nAll counts above ten.\n\n<!-- " + base64.b64encode(small).decode() + " -->\n", small)
save("md_refdef.md", "# Table 1\n\nSee [the paper][p].\n\n[p]: https://doi.invalid/" + base64.urlsafe_b64encode(small).decode() + "\n", small)
save("dup.json", '{"n": "' + base64.b64encode(small).decode() + '", "n": 120}', small)
numbers = [str(i) for i in range(len(bits) + 1)]
save("ws.json", "[" + "".join(n + ([", ", ",  "][int(bits[i])] if i < len(bits) else "") for i, n in enumerate(numbers)) + "]", small)
save("digits.json", '{"rates": [' + ", ".join(f"0.5{'0' * 20}{b:03d}" for b in small) + "]}", small)

pixels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(io.BytesIO(png)).convert("RGB")).copy()
flat = pixels.reshape(-1)
payload_bits = np.unpackbits(np.frombuffer(parquet, np.uint8))
flat[: payload_bits.size] = (flat[: payload_bits.size] & 0xFE) | payload_bits
noise = np.random.default_rng(7).integers(0, 2, flat.size - payload_bits.size, dtype=np.uint8)
flat[payload_bits.size:] = (flat[payload_bits.size:] & 0xFE) | noise
buf = io.BytesIO(); __import__("PIL.Image", fromlist=["Image"]).fromarray(pixels).save(buf, "PNG")
save("chart_lsb.png", buf.getvalue(), parquet)

Image = __import__("PIL.Image", fromlist=["Image"])
rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA")).copy()
flat = rgba.reshape(-1, 4)
data = np.frombuffer(parquet + b"\x00" * (-len(parquet) % 3), np.uint8).reshape(-1, 3)
flat[: len(data), :3], flat[: len(data), 3] = data, 0  # colour under fully transparent pixels
buf = io.BytesIO(); Image.fromarray(rgba).save(buf, "PNG")
save("chart_alpha.png", buf.getvalue(), parquet)
save("notes\u200b\u200c\u200b.txt", "All counts are above ten.\n", b"\x05")
print("PAYLOADS:" + json.dumps(expected))
"""

REFUSED = {
    "notes_zw.md": "ZERO WIDTH",
    "notes_tags.txt": "U+E00",
    "notes_vs.md": "VARIATION SELECTOR",
    "table_bidi.csv": "U+202E RIGHT-TO-LEFT OVERRIDE",
    "table_longcell.csv": "the site's cap is 200 per cell",
    "table_multiline.csv": "row 201, column 3 ('n')",
    "md_comment.md": "raw HTML (or an HTML comment)",
    "md_refdef.md": "link reference definition",
    "dup.json": "duplicate key 'n'",
    "notes\u200b\u200c\u200b.txt": "the file name holds U+200B ZERO WIDTH SPACE",
}
STRIPPED = [
    "chart_private.png",
    "chart_ztxt.png",
    "chart_itxt.png",
    "chart_tail.png",
    "chart_alpha.png",
    "notes_ws.txt",
    "table_spaces.csv",
    "ws.json",
    "digits.json",
]
SHOWN = ["table_b64.csv", "chart_lsb.png", "table_digits.csv"]


# --------------------------------------------------------------------------------------------------
# The attacker's decoders: each returns the payload it finds in a file, or None.


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    offset, chunks = 8, []
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        chunks.append((kind, data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
        if kind == b"IEND":
            break
    return chunks + [(b"tail", data[offset:])]


def _inflate(body: bytes) -> bytes | None:
    try:
        return zlib.decompress(body)
    except zlib.error:
        return None


def _bits_to_bytes(bits: str) -> bytes:
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits) - 7, 8))


def decode_png_private(data: bytes) -> bytes | None:
    return next((_inflate(body) for kind, body in png_chunks(data) if kind == b"prVt"), None)


def decode_png_text(data: bytes) -> bytes | None:
    for kind, body in png_chunks(data):
        if kind == b"zTXt":
            return _inflate(body.split(b"\x00", 1)[1][1:])
        if kind == b"iTXt":
            return body.split(b"\x00", 1)[1][4:]
    return None


def decode_png_tail(data: bytes) -> bytes | None:
    return png_chunks(data)[-1][1] or None


def decode_png_lsb(data: bytes, size: int) -> bytes:
    import numpy as np
    from PIL import Image

    flat = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1)
    return np.packbits(flat[: size * 8] & 1).tobytes()


def decode_png_alpha(data: bytes, size: int) -> bytes:
    import numpy as np
    from PIL import Image

    flat = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).reshape(-1, 4)
    return flat[:, :3].tobytes()[:size]


def decode_trailing_whitespace(data: bytes) -> bytes | None:
    bits = "".join(
        "".join("01"[c == "\t"] for c in re.search(r"[ \t]*$", line).group())
        for line in data.decode().split("\n")
    )
    return _bits_to_bytes(bits) or None


def decode_leading_spaces(data: bytes) -> bytes | None:
    found = [len(m.group(1)) for m in re.finditer(r"^[^,\n]*,( *)", data.decode(), re.MULTILINE)][1:]
    return bytes(n for n in found if n) or None


def decode_json_separators(data: bytes) -> bytes | None:
    return (
        _bits_to_bytes("".join("01"[len(m.group(1)) == 2] for m in re.finditer(r",( +)", data.decode())))
        or None
    )


def decode_json_digits(data: bytes) -> bytes | None:
    return bytes(int(m.group(1)) for m in re.finditer(r"0\.50{20}(\d{3})", data.decode())) or None


def decode_precision_digits(data: bytes) -> bytes:
    digits = re.findall(r"^G\d+,\d+\.(\d{12})$", data.decode(), re.MULTILINE)
    return bytes(int(d[i : i + 3]) for d in digits for i in range(0, 12, 3))


def decode_base64_rows(data: bytes) -> bytes:
    cells = re.findall(r"^X\d+,F,(\S+)$", data.decode(), re.MULTILINE)
    return base64.b64decode("".join(cells))


DECODERS = {
    "chart_private.png": decode_png_private,
    "chart_ztxt.png": decode_png_text,
    "chart_itxt.png": decode_png_text,
    "chart_tail.png": decode_png_tail,
    "notes_ws.txt": decode_trailing_whitespace,
    "table_spaces.csv": decode_leading_spaces,
    "ws.json": decode_json_separators,
    "digits.json": decode_json_digits,
}


# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attacker(hub):
    client = HubClient(hub, "alice")
    assert client.login().status_code == 302
    client.spawn("demo-cardio")
    container = hub.container("alice", "demo-cardio")
    code, out = py_exec(container, BUILD, timeout=180)
    assert code == 0, out[-3000:]
    payloads = json.loads(out.split("PAYLOADS:", 1)[1].strip().splitlines()[0])
    yield client, container, {name: base64.b64decode(v) for name, v in payloads.items()}
    client.stop("demo-cardio")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def export(container, *paths: str) -> tuple[int, str]:
    return docker_exec(
        container,
        [
            "enclave-export",
            "--json",
            "request",
            *[f"/workspace/payloads/{p}" for p in paths],
            "--context",
            "Patients per group",
            "--controls",
            "all counts above 10",
        ],
        timeout=300,
    )


def test_payload_generation_really_hides_row_data(attacker):
    """The attack is real: every decoder recovers its payload from the file as the researcher wrote it."""
    _, container, payloads = attacker
    for name, decode in DECODERS.items():
        code, out = docker_exec(container, f"base64 -w0 /workspace/payloads/{name}")
        assert code == 0 and decode(base64.b64decode(out)) == payloads[name], name
    code, out = docker_exec(container, "base64 -w0 /workspace/payloads/chart_alpha.png")
    assert (
        decode_png_alpha(base64.b64decode(out), len(payloads["chart_alpha.png"]))
        == payloads["chart_alpha.png"]
    )
    code, out = docker_exec(container, "base64 -w0 /workspace/payloads/table_b64.csv")
    assert decode_base64_rows(base64.b64decode(out)) == payloads["table_b64.csv"]
    code, out = docker_exec(container, "base64 -w0 /workspace/payloads/table_digits.csv")
    assert decode_precision_digits(base64.b64decode(out)) == payloads["table_digits.csv"]
    assert b"PAR1" in payloads["chart_private.png"] and len(payloads["chart_private.png"]) > 1000


def test_invisible_and_unrenderable_payloads_are_refused_and_audited(hub, attacker):
    _, container, _ = attacker
    before = len(list(AuditLog.open(hub.state).records(action="export.refused", actor="alice")))
    listed = len(json.loads(docker_exec(container, ["enclave-export", "--json", "list"])[1]))
    for name, reason in REFUSED.items():
        code, out = export(container, name)
        assert code != 0, f"{name} was accepted: {out[:500]}"
        assert repr(f"payloads/{name}")[1:-1] in out and reason in out, (name, out)
    refusals = list(AuditLog.open(hub.state).records(action="export.refused", actor="alice"))
    assert len(refusals) - before >= 1, "the refusals are on the audit trail"
    after = json.loads(docker_exec(container, ["enclave-export", "--json", "list"])[1])
    assert len(after) == listed, "a refused request leaves nothing behind"


def test_released_bytes_carry_none_of_the_stripped_payloads(hub, attacker, browser):
    client, container, payloads = attacker
    code, out = export(container, *STRIPPED)
    assert code == 0, out
    request = json.loads(out)
    rid = request["id"]
    # the checkers approve everything: the attacker's best case
    assert review(checker_page(browser, hub, "carol"), hub, rid) == "PARTIALLY_REVIEWED"
    assert review(checker_page(browser, hub, "dave"), hub, rid) == "RELEASED"

    shown = json.loads(docker_exec(container, ["enclave-export", "--json", "show", rid])[1])
    client.session.get(f"{hub.url}/services/exports/mine", timeout=30)  # OAuth login to the service
    for f in shown["files"]:
        name = f["path"].rsplit("/", 1)[-1]
        got = client.session.get(f"{hub.url}/services/exports/requests/{rid}/download/{f['id']}", timeout=60)
        assert got.status_code == 200, name
        assert f["original_sha256"] != f["sha256"], f"{name}: the released bytes are the canonical form"
        payload = payloads[name]
        found = (DECODERS[name](got.content) if name in DECODERS
                 else decode_png_alpha(got.content, len(payload)))  # fmt: skip
        assert found != payload, f"{name}: the payload survived the release"
        assert payload[:32] not in got.content and base64.b64encode(payload)[:32] not in got.content, name
        if name.endswith(".png"):
            assert {k for k, _ in png_chunks(got.content)} == {b"IHDR", b"IDAT", b"IEND", b"tail"}
            assert png_chunks(got.content)[-1][1] == b""


def test_visible_payloads_are_shown_whole_and_flagged_so_a_careful_checker_returns_them(
    hub, attacker, browser
):
    _, container, payloads = attacker
    code, out = export(container, *SHOWN)
    assert code == 0, out
    request = json.loads(out)
    rid = request["id"]
    files = {f["path"].rsplit("/", 1)[-1]: f for f in request["files"]}
    table, image = files["table_b64.csv"], files["chart_lsb.png"]
    assert {c["check"]: c["outcome"] for c in table["checks"]["results"]}["capacity"] == "review"
    assert {c["check"]: c["outcome"] for c in image["checks"]["results"]}["capacity"] == "review"
    digits = next(c for c in files["table_digits.csv"]["checks"]["results"] if c["check"] == "capacity")
    assert digits["outcome"] == "review" and digits["cell_total"] == len(payloads["table_digits.csv"]) // 4
    assert {c["note"] for c in digits["cells"]} == {"long digit run"}, "every high-precision cell is flagged"

    carol = checker_page(browser, hub, "carol")
    carol.goto(f"{hub.url}/services/exports/requests/{rid}")
    assert carol.locator(f"#capacity-findings-{table['id']} li").count() > 0
    assert carol.locator(f"#capacity-findings-{image['id']} li").count() == 1
    # carol pages through every row of the table, as the pager offers them
    seen, flagged = [], 0
    pages = carol.locator(f"#pager-{table['id']} a.page-link").count()
    assert pages >= 2, "rows past the first page are reachable"
    for n in range(1, pages + 1):
        carol.goto(f"{hub.url}/services/exports/requests/{rid}/files/{table['id']}?page={n}")
        for row in carol.locator(f"#data-{table['id']} tbody tr").all():
            cells = row.locator("td").all()
            seen.append(cells[2].inner_text().split(" (flagged")[0])
            flagged += cells[2].get_attribute("class") == "flag"
    rows = payloads["table_b64.csv"]
    b64 = base64.b64encode(rows).decode()
    assert "".join(s for s in seen if not s.isdigit()) == b64, "every payload byte was on a page carol read"
    cells = [b64[i : i + 60] for i in range(0, len(b64), 60)]
    assert flagged >= sum(len(c) >= 16 for c in cells), (
        "every payload cell of 16 characters or more is highlighted"
    )
    assert (
        decode_png_lsb(
            base64.b64decode(docker_exec(container, "base64 -w0 /workspace/payloads/chart_lsb.png")[1]),
            len(payloads["chart_lsb.png"]),
        )
        == payloads["chart_lsb.png"]
    )

    # checkers who act on the highlighted findings request changes: nothing is released
    assert review(carol, hub, rid, vote="changes", comment="flagged cells: explain") == "PARTIALLY_REVIEWED"
    assert review(checker_page(browser, hub, "dave"), hub, rid, vote="changes") == "RETURNED"
    shown = json.loads(docker_exec(container, ["enclave-export", "--json", "show", rid])[1])
    assert shown["status"] == "RETURNED" and not shown.get("released")
