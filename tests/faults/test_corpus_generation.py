"""The corpus generators make what they claim (no services, a few seconds)."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from schemas import RejectionReason
from tests.faults import corpus
from tests.faults.corpus import KINDS, LEFT_ALONE, REPORT, CorpusContext, entry_type

#: Entry types of the kinds that are not one regular file at their path.
SPECIAL_TYPES = {
    "fifo_named_jpg": "fifo",
    "unix_socket_named_jpg": "socket",
    "dangling_symlink": "symlink",
    "symlink_loop": "symlink",
    "symlink_to_good_file": "symlink",
    "directory_named_jpg": "dir",
}


def _sha_of_file(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_the_corpus_is_large_and_its_expectations_are_well_formed():
    assert len(KINDS) >= 50
    assert len({k.name for k in KINDS}) == len(KINDS)
    codes = {r.value for r in RejectionReason}
    for k in KINDS:
        assert k.expect in (REPORT, LEFT_ALONE) or (
            k.expect.startswith("rejected:") and k.expect.split(":", 1)[1] in codes), k.name
    expects = {k.expect for k in KINDS}
    assert {REPORT, LEFT_ALONE, "rejected:not_a_regular_file", "rejected:truncated"} <= expects
    for required in ("name_74_cjk_chars", "stalled_writer", "fifo_named_jpg", "too_large_sparse",
                     "duplicate_two_names", "part_zero_length", "name_patient_like"):
        assert corpus.kind(required)


@pytest.fixture
def ctx(tmp_path) -> CorpusContext:
    return CorpusContext(intake_dir=tmp_path / "intake", outside_dir=tmp_path / "outside",
                         max_file_bytes=300 * 1024 * 1024, stall_s=0.3, claim_timeout_s=0.3)


def test_every_kind_creates_what_it_claims(ctx):
    placed = corpus.place_all(ctx)
    assert set(placed) | set(corpus.skipped()) == {k.name for k in KINDS}
    names = [n for p in placed.values() for n in p.original_names]
    assert len(names) == len(set(names)), "original names must tell kinds apart"
    shas = [p.sha256 for p in placed.values() if p.sha256]
    assert len(shas) == len(set(shas)), "contents must tell kinds apart"
    corpus.wait_writers(placed.values(), timeout=30)

    for name, p in placed.items():
        assert p.kind == name and p.paths, name
        want = SPECIAL_TYPES.get(name, "file")
        for path in p.paths:
            assert entry_type(path) == want, (name, entry_type(path))
            assert ctx.intake_dir in path.parents, name
        if want == "file" and p.sha256 and name != "too_large_sparse":
            assert all(_sha_of_file(path) == p.sha256 for path in p.paths), name

    # Special entries: checked without ever opening the FIFO.
    assert not placed["dangling_symlink"].paths[0].exists()
    with pytest.raises(OSError):
        os.stat(placed["symlink_loop"].paths[0])
    assert _sha_of_file(placed["symlink_to_good_file"].paths[0]) == placed["symlink_to_good_file"].sha256
    assert os.stat(placed["hardlink_to_good_file"].paths[0]).st_nlink == 2
    assert not any(placed["directory_named_jpg"].paths[0].iterdir())

    big = os.stat(placed["too_large_sparse"].paths[0])
    assert big.st_size == ctx.max_file_bytes + 1 and big.st_blocks * 512 < 1024 * 1024  # sparse

    assert len(os.fsencode(placed["name_74_cjk_chars"].paths[0].name)) == 226
    assert len(os.fsencode(placed["name_255_bytes_cjk"].paths[0].name)) == 255
    assert len(os.fsencode(placed["name_255_bytes_ascii"].paths[0].name)) == 255
    assert b"\xff" in os.fsencode(placed["name_not_utf8"].paths[0].name)
    assert "\n" in placed["name_with_newline"].paths[0].name
    assert len(placed["name_deeply_nested"].paths[0].relative_to(ctx.intake_dir).parts) == 31

    dup = placed["duplicate_two_names"]
    assert len(dup.paths) == 2 and len({_sha_of_file(p) for p in dup.paths}) == 1
    assert not (ctx.intake_dir / "renamed_from_part.jpg.part").exists()
    assert os.path.getsize(placed["part_zero_length"].paths[0]) == 0

    if "no_read_permission" in placed:
        assert stat.S_IMODE(os.stat(placed["no_read_permission"].paths[0]).st_mode) == 0
    else:
        assert "root" in corpus.skipped()["no_read_permission"]


def test_the_stalled_writer_pauses_before_completing(ctx):
    """Mid-stall the file is a strict prefix; afterwards it is whole."""
    slow = CorpusContext(ctx.intake_dir, ctx.outside_dir, stall_s=1.5)
    p = corpus.place(corpus.kind("stalled_writer"), slow)
    size_during = os.path.getsize(p.paths[0])
    assert _sha_of_file(p.paths[0]) != p.sha256 and size_during > 0
    p.wait(10)
    assert _sha_of_file(p.paths[0]) == p.sha256 and os.path.getsize(p.paths[0]) > size_during


def test_the_late_appender_completes_only_after_its_claim(ctx):
    slow = CorpusContext(ctx.intake_dir, ctx.outside_dir, claim_timeout_s=30)
    p = corpus.place(corpus.kind("appended_after_claim"), slow)
    path = p.paths[0]
    half = _sha_of_file(path)
    claimed = ctx.intake_dir / "claimed.jpg"
    os.rename(path, claimed)  # what the watcher does
    p.wait(10)
    assert half != p.sha256 and _sha_of_file(claimed) == p.sha256


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("k", [k for k in KINDS if k.content is not None], ids=lambda k: k.name)
def test_the_decoder_agrees_with_each_content_kind(k):
    """Outcomes decided by content alone, checked against the service's decoder."""
    from worker.errors import InputRejected
    from worker.imaging.decode import decode_bytes

    try:
        decode_bytes(k.content())
        got = REPORT
    except InputRejected as exc:
        got = f"rejected:{exc.code.value}"
    if got != k.expect and k.known_gap:
        pytest.xfail(f"known gap (issue 9): {k.known_gap}")
    assert got == k.expect
