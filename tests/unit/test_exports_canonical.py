"""Canonical outputs (exports/canonical.py): every type round-trips to a fixed point, every character
rule and every cap refuses with a message naming the file and the row/column or line, and nothing a
viewer does not show survives (PNG chunks, whitespace, duplicate keys)."""

from __future__ import annotations

import io
import json
import sqlite3
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from exports import canonical_png, sdc_png
from exports.canonical import Limits, NotCanonical, canonicalize
from exports.domain import FileRefused
from exports.storage import SQLStorage
from exports.testing import group, make_env, researcher

L = Limits()


def canon(data: str | bytes, filetype: str = "csv", limits: Limits = L) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return canonicalize(raw, filetype, limits, "files[0].path 'out/t'")


def refused(data: str | bytes, filetype: str = "csv", limits: Limits = L) -> str:
    with pytest.raises(NotCanonical) as caught:
        canon(data, filetype, limits)
    message = str(caught.value)
    assert "files[0].path 'out/t'" in message, "the error names the file"
    return message


def png_bytes(image: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **save)
    return out.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """Insert a chunk just before IEND."""
    return png[:-12] + chunk(kind, body) + png[-12:]


def chart(size: tuple[int, int] = (120, 80), mode: str = "RGB") -> Image.Image:
    image = Image.new("RGB", size, "white")
    for x in range(10, 100):
        image.putpixel((x, 40 + x % 7), (200, 30, 30))
    return image.convert(mode)


# --------------------------------------------------------------------------------------------------
# Round trips and idempotence


@pytest.mark.parametrize(
    ("filetype", "data"),
    [
        ("csv", 'region,n\nSeoul,120\n"Busan, south",45\n"say ""hi""",3\n'),
        ("tsv", "region\tn\nSeoul\t120\n"),
        ("text", "Results\n\nThe cohort had 1,204 people.\n서울 120명\n"),
        (
            "markdown",
            "# Table 1\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nSee [the paper](https://example.org).\n",
        ),
        ("json", '{"b": [1, 2.5, "x"], "a": {"n": 3}}'),
    ],
)
def test_canonical_text_forms_are_fixed_points(filetype, data):
    once = canon(data, filetype)
    assert canon(once, filetype) == once
    assert once.endswith(b"\n")


def test_a_canonical_csv_is_unchanged_and_values_survive():
    table = 'region,n\nSeoul,120\n"Busan, south",45\n'
    assert canon(table) == table.encode()


def test_csv_dialect_is_fixed():
    messy = '\ufeffregion;x,n\r\n"Seoul","120"\r\n\r\n  Busan   south ,45 \r\n'
    assert canon(messy) == b"region;x,n\nSeoul,120\nBusan south,45\n"


def test_json_is_sorted_indented_and_numbers_are_shortest():
    out = canon('{"b":1.50,"a":[1e2, 0.1000000000000000055511151231257827]}', "json")
    assert out == b'{\n "a": [\n  100.0,\n  0.1\n ],\n "b": 1.5\n}\n'


def test_json_escapes_and_spacing_have_one_spelling():
    assert canon('{"a":"\\u0041\\/", "b" :\t[ 1 ,2 ]}', "json") == canon('{"b": [1, 2], "a": "A/"}', "json")


def test_text_loses_trailing_whitespace_and_carriage_returns():
    # whitespace steganography (trailing spaces and tabs) cannot survive
    out = canon("a  \t \r\nb\t\tc\n\n\n", "text")
    assert out == b"a\nb       c\n"


def test_nfc_is_applied_so_two_spellings_of_one_letter_cannot_carry_a_bit():
    assert canon("name\nCafe\u0301\n") == "name\nCaf\u00e9\n".encode()
    assert canon("e\u0301", "text") == "\u00e9\n".encode()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"])
def test_png_modes_round_trip_to_a_fixed_point(mode):
    image = chart(mode="RGB")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    else:
        image = image.convert(mode)
    once = canon(png_bytes(image), "png")
    assert canon(once, "png") == once
    assert set(sdc_png.parse_png(once, "x").chunk_types) <= {"IHDR", "IDAT", "IEND"}
    decoded = Image.open(io.BytesIO(once))
    assert decoded.mode in ("L", "RGB") and decoded.size == image.size


# --------------------------------------------------------------------------------------------------
# PNG: only the pixels leave


def test_png_ancillary_private_and_text_chunks_are_dropped():
    payload = b"PAYLOAD-" + bytes(range(256)) * 4
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "patient 12345")
    info.add_text("z", "x" * 500, zip=True)
    info.add_itxt("i", "hidden", zip=True)
    png = png_bytes(chart(), pnginfo=info, exif=b"Exif\x00\x00" + b"MM\x00*\x00\x00\x00\x08\x00\x00")
    png = with_chunk(png, b"prVt", zlib.compress(payload))
    png = with_chunk(png, b"tEXt", b"k\x00" + payload)
    out = canon(png, "png")
    assert sdc_png.parse_png(out, "x").chunk_types == ("IHDR", "IDAT", "IEND")
    assert b"prVt" not in out and b"PAYLOAD" not in out and b"patient" not in out
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out))), np.asarray(chart()))


def test_data_after_iend_is_not_kept():
    out = canon(png_bytes(chart()) + b"PK\x03\x04 a zip file", "png")
    assert out.endswith(b"IEND\xaeB`\x82") and b"PK\x03\x04" not in out


def test_apng_extra_frames_do_not_leave():
    first, second = chart(), Image.new("RGB", (120, 80), (1, 2, 3))
    out_buf = io.BytesIO()
    first.save(out_buf, "PNG", save_all=True, append_images=[second], duration=100)
    out = canon(out_buf.getvalue(), "png")
    assert b"acTL" not in out and b"fdAT" not in out
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out))), np.asarray(first))


def test_unused_palette_entries_are_gone():
    palette = list(range(256)) * 3  # 256 entries, 2 used: 254 x 3 bytes of room
    image = Image.new("P", (4, 4), 0)
    image.putpalette(palette)
    image.putpixel((1, 1), 1)
    out = canon(png_bytes(image), "png")
    assert b"PLTE" not in out and Image.open(io.BytesIO(out)).mode == "RGB"


def test_transparency_is_flattened_onto_white_as_the_page_shows_it():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)  # colour nobody sees: alpha 0 or 1
    rgba[..., 3] = 1
    rgba[2, 2, 3] = 0
    rgba[0, 0] = (10, 20, 30, 255)
    out = canon(png_bytes(Image.fromarray(rgba)), "png")
    decoded = np.asarray(Image.open(io.BytesIO(out)))
    assert decoded.shape == (4, 4, 3) and decoded[0, 0].tolist() == [10, 20, 30]
    assert decoded[2, 2].tolist() == [255, 255, 255] and (decoded[1:, 1:] >= 254).all()


def test_sixteen_bit_samples_keep_only_what_a_screen_shows():
    low = np.full((8, 8), 0x1234, np.uint16)
    low[0, 0] = 0x12FF  # the low byte differs: invisible
    out = canon(png_bytes(Image.fromarray(low)), "png")
    assert np.unique(np.asarray(Image.open(io.BytesIO(out)))).tolist() == [0x12]


def test_a_png_that_is_not_a_png_or_is_broken_is_refused():
    assert "not a PNG" in refused(b"GIF89a....", "png")
    assert "cannot be decoded" in refused(png_bytes(chart())[:60], "png")


def test_png_caps_are_checked_before_decoding(monkeypatch):
    # the header of a 100000 x 100000 image with almost no data: refused before any pixel is decoded
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    monkeypatch.setattr(canonical_png, "_pixels", lambda image: pytest.fail("pixels decoded"))
    assert "pixels a side" in refused(bomb, "png")
    assert "120 x 80 pixels is over" in refused(png_bytes(chart()), "png", Limits(max_png_pixels=9000))
    assert "over the site's cap" in refused(png_bytes(chart()), "png", Limits(max_png_side=100))


# --------------------------------------------------------------------------------------------------
# Character rules

REFUSED_CHARACTERS = {
    "\x07": "control",
    "\x7f": "control",
    "\u0085": "control",
    "\u00ad": "invisible",
    "\u034f": "invisible",
    "\u200b": "invisible",
    "\u200d": "invisible",
    "\u2062": "invisible",
    "\u202e": "invisible",
    "\u2067": "invisible",
    "\ufeff": "invisible",
    "\ufe0f": "invisible",
    "\U000e0041": "invisible",
    "\U000e0101": "invisible",
    "\u3164": "invisible",
    "\u2800": "invisible",
    "\u0600": "format character",
    "\ue000": "private-use",
    "\U000f0000": "private-use",
    "\u0378": "unassigned",
    "\u00a0": "space other than U+0020",
    "\u3000": "space other than U+0020",
    "\u2009": "space other than U+0020",
    "\u2028": "line separator",
    "\u2029": "paragraph separator",
}


@pytest.mark.parametrize(
    ("ch", "why"), REFUSED_CHARACTERS.items(), ids=lambda v: f"U+{ord(v):04X}" if len(v) == 1 else v
)
def test_invisible_or_confusable_characters_are_refused_in_tables_naming_row_and_column(ch, why):
    message = refused(f"region,n\nSeoul,120\nBusan,4{ch}5\n")
    assert "row 2, column 2 ('n')" in message and f"U+{ord(ch):04X}" in message and why in message


@pytest.mark.parametrize(
    ("ch", "why"), REFUSED_CHARACTERS.items(), ids=lambda v: f"U+{ord(v):04X}" if len(v) == 1 else v
)
def test_invisible_or_confusable_characters_are_refused_in_text_naming_the_line(ch, why):
    for filetype in ("text", "markdown"):
        message = refused(f"# Results\n\nAll good{ch} here\n", filetype)
        assert "line 3, character 9" in message and why in message


def test_refused_characters_in_the_header_and_in_json_are_named():
    assert "the header, column 2" in refused("region,n\u200b\nSeoul,120\n")
    assert "$.rows[1]" in refused('{"rows": ["a", "b\u200cc"]}', "json")
    assert "key" in refused('{"a\u2066": 1}', "json")
    assert "not in Unicode NFC" in refused('{"a": "e\\u0301"}', "json")
    assert "U+200B" in refused('{"a": "\\u200b"}', "json"), "escapes are decoded before the rules apply"


def test_tabs_and_line_breaks_inside_cells_are_refused():
    assert "row 1, column 1" in refused('region,n\n"Seoul\nSeocho",120\n')
    assert "row 1, column 1" in refused("region,n\nSe\toul,120\n")
    assert "row 1, column 2" in refused('region\tn\nSeoul\t"1\r2"\n', "tsv")


def test_stacked_combining_marks_are_refused_but_accents_and_hangul_are_fine():
    assert "stacked combining marks" in refused("a\u0301\u0302\u0303\u0304\u0305\n", "text")
    ok = "이름,설명\n홍길동,café naïve ✓ 😀\n"
    assert canon(ok) == ok.encode()


def test_bytes_that_are_not_utf8_or_are_a_png_are_refused():
    assert "not UTF-8" in refused(b"region,n\n\xff\xfe,1\n")
    assert "PNG" in refused(png_bytes(chart()), "text")


# --------------------------------------------------------------------------------------------------
# Structure


def test_ragged_rows_empty_tables_and_bad_quoting_are_refused():
    assert "row 2 has 3 cells; the header has 2" in refused("a,b\n1,2\n1,2,3\n")
    assert "empty" in refused("")
    assert "not a valid table" in refused('a,b\n"1"x,2\n')


def test_json_duplicate_keys_nan_and_bad_json_are_refused():
    assert "duplicate key 'n'" in refused('{"n": 3, "n": 300}', "json")
    assert "duplicate key 'x'" in refused('[{"a": {"x": 1, "x": 2}}]', "json")
    assert "NaN is not a JSON number" in refused('{"n": NaN}', "json")
    assert "line 1, column" in refused('{"n": ', "json")
    assert "out of range" in refused('{"n": 1e400}', "json")


def test_markdown_that_renders_as_nothing_is_refused():
    assert "line 3: raw HTML" in refused("# T\n\n<!-- 4f2a9c -->\n", "markdown")
    assert "raw HTML" in refused("Text <span title='payload'>x</span>\n", "markdown")
    assert "link reference definition [P]" in refused('# T\n\n[p]: https://x.invalid "data"\n', "markdown")
    assert canon("<!-- plain text, not Markdown -->\n", "text")  # a .txt file is shown as it is


# --------------------------------------------------------------------------------------------------
# Caps (site policy)


@pytest.mark.parametrize(
    ("data", "filetype", "limits", "expected"),
    [
        ("a\n" + "1\n" * 4, "csv", Limits(max_rows=3), "more than 3 data rows"),
        ("a,b,c\n1,2,3\n", "csv", Limits(max_columns=2), "3 columns is over the site's cap of 2"),
        ("a,b\n1,12345\n", "csv", Limits(max_cell_chars=4), "row 1, column 2 ('b') holds 5 characters"),
        ("x\n" * 5, "text", Limits(max_text_lines=4), "5 lines is over the site's cap of 4"),
        ("short\n" + "y" * 11 + "\n", "markdown", Limits(max_line_chars=10), "line 2 has 11 characters"),
        ("z\n" * 50, "text", Limits(max_text_bytes=64), "100 bytes is over the site's cap of 64"),
        ('{"a": [[[1]]]}', "json", Limits(max_json_depth=3), "nested deeper than the site's cap of 3"),
        ('["' + "x" * 80 + '"]', "json", Limits(max_text_bytes=64), "over the site's cap of 64"),
    ],
)
def test_every_cap_refuses_with_a_message_naming_the_limit(data, filetype, limits, expected):
    assert expected in refused(data, filetype, limits)


def test_default_caps_are_the_site_policy_defaults():
    assert (L.max_rows, L.max_columns, L.max_cell_chars) == (10_000, 200, 200)
    assert Limits.from_mapping({"max_rows": 5, "unknown": 1}).max_rows == 5


def test_site_policy_caps_reach_the_export_service(tmp_path):
    import shutil

    import yaml

    from exports.enclave_policy import PolicyProjects
    from hub.paths import REPO_ROOT

    policy = tmp_path / "policy"
    shutil.copytree(REPO_ROOT / "policies", policy)
    site = yaml.safe_load((policy / "site.yaml").read_text())
    site["canonical_outputs"]["max_rows"] = 7
    (policy / "site.yaml").write_text(yaml.safe_dump(site))
    project = PolicyProjects(tmp_path / "state", policy).get("demo-cardio")
    assert project.canonical.max_rows == 7 and project.canonical.max_columns == 200


# --------------------------------------------------------------------------------------------------
# In the workflow: canonical bytes are frozen, the original recorded, a refusal stores nothing


def test_the_canonical_bytes_are_frozen_and_the_original_is_recorded(tmp_path):
    import hashlib

    env = make_env(tmp_path)
    original = b"region,n\r\nSeoul , 120\r\n"
    env.write("out/t.csv", original)
    request = env.workflow.create(researcher(), "demo-cardio", [group(["out/t.csv"])])
    f = request.files[0]
    assert env.workflow.quarantine.get(f.sha256) == b"region,n\nSeoul,120\n"
    assert f.original_sha256 == hashlib.sha256(original).hexdigest() and f.original_size == len(original)
    assert not env.workflow.quarantine.path_for(hashlib.sha256(original).hexdigest()).exists()
    added = [e for e in env.audit.records if e["action"] == "export.file_add"][-1]["details"]
    assert added["original_sha256"] == f.original_sha256 and added["sha256"] == f.sha256


def test_a_file_that_cannot_be_canonicalized_refuses_the_whole_call_and_stores_nothing(tmp_path):
    env = make_env(tmp_path)
    env.write("out/good.csv", "region,n\nSeoul,120\n")
    env.write("out/bad.md", "fine\u200b\n")
    with pytest.raises(FileRefused) as caught:
        env.workflow.create(researcher(), "demo-cardio", [group(["out/good.csv", "out/bad.md"])])
    assert "files[1].path 'out/bad.md': line 1, character 5: U+200B ZERO WIDTH SPACE" in str(caught.value)
    quarantine = tmp_path / "state" / "exports" / "quarantine"
    assert not [p for p in quarantine.rglob("*") if p.is_file()], "nothing half-stored"
    assert env.storage.list(__import__("exports.storage").storage.RequestQuery()).total == 0
    assert env.audit.refusals()[-1]["details"]["reason"] == "invisible_characters"


def test_file_names_follow_the_character_rules(tmp_path):
    env = make_env(tmp_path)
    env.write("out/fig\u202egnp.csv", "a,b\n1,2\n")
    env.write("out/t\u200b\u200c.csv", "a,b\n1,2\n")
    for name, shown in (("out/fig\u202egnp.csv", "U+202E"), ("out/t\u200b\u200c.csv", "U+200B")):
        with pytest.raises(FileRefused) as caught:
            env.workflow.create(researcher(), "demo-cardio", [group([name])])
        assert "the file name holds" in str(caught.value) and shown in str(caught.value)


def test_an_older_database_gains_the_original_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    SQLStorage.open(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:  # as the schema was before canonical outputs
        db.execute("ALTER TABLE export_files DROP COLUMN original_sha256")
        db.execute("ALTER TABLE export_files DROP COLUMN original_size")
    SQLStorage.open(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(export_files)")}
    assert {"original_sha256", "original_size"} <= columns


def test_json_output_is_what_the_checks_and_the_page_read():
    out = json.loads(canon('{"z": 1, "a": "x"}', "json"))
    assert out == {"a": "x", "z": 1}


def test_random_tables_and_texts_canonicalize_to_fixed_points():
    """Idempotence over many random inputs, including quotes, spaces, blank lines and CRLF: whatever is
    accepted is a fixed point, and the fast path for canonical tables agrees with the general one."""
    import random

    rng = random.Random(10)
    alphabet = ["a", "B", "7", " ", " ", ",", '"', "\n", "\r\n", "\r", "\t", "é", "서", "-", "."]
    accepted = 0
    for _ in range(1500):
        raw = "h1,h2,h3\n" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        for filetype in ("csv", "tsv", "text", "markdown"):
            try:
                once = canon(raw, filetype)
            except NotCanonical:
                continue
            accepted += 1
            assert canon(once, filetype) == once, (filetype, raw)
            if filetype in ("csv", "tsv"):
                assert canon(once.replace(b"\n", b"\r\n"), filetype) == once, "CRLF takes the general path"
    assert accepted > 1500
