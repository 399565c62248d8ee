"""The site's seal: what it wrote is read without the opcode check, nothing else."""

import os
import pickle
import struct
from pathlib import Path

import pytest
from helpers import run

from mailqueue import Switchboard, entry_format, message_from_string, qfile, safepickle
from mailqueue.configuration import config
from mailqueue.seal import (
    KEPT_KEYS,
    MAX_RANGES,
    SEAL_MAX,
    TRAILER_SIZE,
    Seal,
    seal_start,
)

TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: sealed\n\nHello.\n"


@pytest.fixture
def queue(var_dir):
    return config.switchboards["in"]


@pytest.fixture
def checks(monkeypatch):
    """The opcode checks made, by the position each started at."""
    made = []
    real = safepickle.check

    def check(data, position=0, long_strings=None):
        made.append(position)
        return real(data, position, long_strings)

    monkeypatch.setattr(safepickle, "check", check)
    return made


def path_of(queue, filebase, extension=".pck"):
    return os.path.join(queue.queue_directory, filebase + extension)


def test_an_entry_the_site_writes_is_sealed_and_read_without_the_check(queue, checks):
    filebase = queue.enqueue(message_from_string(TEXT), listid="test.example.com")
    data = Path(path_of(queue, filebase)).read_bytes()
    assert seal_start(data) == len(data) - TRAILER_SIZE
    # A reader that knows nothing of seals reads two pickles and stops.
    with open(path_of(queue, filebase), "rb") as stream:
        assert pickle.load(stream)["subject"] == "sealed"
        assert pickle.load(stream)["listid"] == "test.example.com"
    checks.clear()
    msg, msgdata = queue.dequeue(filebase)
    assert checks == []
    assert msg["subject"] == "sealed" and msgdata["listid"] == "test.example.com"
    key = Path(config.seal.path).read_text().split()
    assert len(key) == 2 and key[1] not in data.hex()  # the secret is in no entry
    assert os.stat(config.seal.path).st_mode & 0o777 == 0o600


def test_a_sealed_entry_under_another_name_is_checked_in_full(queue, checks):
    filebase = queue.enqueue(message_from_string(TEXT))
    other = "1600000000.0+" + "7" * 40
    os.rename(path_of(queue, filebase), path_of(queue, other))
    checks.clear()
    msg, _ = queue.dequeue(other)
    assert len(checks) == 2 and msg["subject"] == "sealed"


@pytest.mark.parametrize("damage", ["forged", "other key", "flipped byte"])
def test_a_seal_that_does_not_hold_means_the_full_check(
    queue, checks, damage, tmp_path
):
    filebase = queue.enqueue(message_from_string(TEXT))
    path = path_of(queue, filebase)
    data = Path(path).read_bytes()
    content = data[:-TRAILER_SIZE]
    if damage == "forged":
        data = data[:-2] + bytes([data[-2] ^ 1]) + b"."
    elif damage == "other key":
        data = content + Seal(str(tmp_path / "other.keys")).trailer(
            filebase, (content,)
        )
    else:  # a byte of the message changed, within a string
        at = content.index(b"Hello")
        data = content[:at] + b"J" + content[at + 1 :] + data[-TRAILER_SIZE:]
    with open(path, "wb") as stream:
        stream.write(data)
    checks.clear()
    msg, _ = queue.dequeue(filebase)
    assert len(checks) == 2
    assert msg.get_payload() in ("Hello.\n", "Jello.\n")


def test_a_truncated_seal_is_bytes_after_the_metadata(queue):
    filebase = queue.enqueue(message_from_string(TEXT))
    path = path_of(queue, filebase)
    data = Path(path).read_bytes()
    with open(path, "wb") as stream:
        stream.write(data[:-1])
    with pytest.raises(qfile.QueueFileError, match="bytes follow the metadata"):
        queue.dequeue(filebase)


def test_a_sealed_entry_that_is_not_two_pickles_is_refused(queue, tmp_path):
    # A valid seal over bytes this site never wrote as an entry (a stolen
    # key): still built only by the restricted unpickler, and refused.
    seal = config.seal
    pickles = pickle.dumps("a message") + pickle.dumps({"a": 1}) + b"extra"
    path = path_of(queue, "1600000000.0+" + "8" * 40)
    with open(path, "wb") as stream:
        stream.write(pickles + seal.trailer("1600000000.0+" + "8" * 40, (pickles,)))
    with pytest.raises(qfile.QueueFileError, match="5 bytes follow"):
        entry_format.load_entry(path, seal=seal)


def test_recovery_keeps_the_seal(queue, checks):
    filebase = queue.enqueue(message_from_string(TEXT))
    queue.dequeue(filebase)
    Switchboard("in", queue.queue_directory, seal=config.seal).recover_backup_files()
    checks.clear()
    _, msgdata = queue.dequeue(filebase)
    assert checks == [] and msgdata["_bak_count"] == 1


def test_hand_made_switchboards_do_not_seal(tmp_path):
    plain = Switchboard("plain", str(tmp_path / "plain"))
    filebase = plain.enqueue(message_from_string(TEXT))
    data = Path(path_of(plain, filebase)).read_bytes()
    assert seal_start(data) == len(data)
    assert plain.dequeue(filebase)[0]["subject"] == "sealed"


BODY = "A line of the body.\n" * (SEAL_MAX // 20)


def test_a_large_entry_is_sealed_with_its_body_left_out_of_the_mac(queue, checks):
    filebase = queue.enqueue(message_from_string(TEXT + BODY))
    data = Path(path_of(queue, filebase)).read_bytes()
    start = seal_start(data)
    assert len(data) - start == TRAILER_SIZE + 8  # one range: the body
    offset, length = struct.unpack("<II", data[start + 19 : start + 27])
    assert data[offset : offset + length].decode() == "Hello.\n" + BODY
    assert len(checks) == 1  # the writer walked it, to find the body
    checks.clear()
    msg, _ = queue.dequeue(filebase)
    assert checks == [] and msg.get_payload() == "Hello.\n" + BODY


@pytest.mark.parametrize("where", ["in the body", "in the subject", "in the ranges"])
def test_only_the_body_of_a_large_sealed_entry_may_change(queue, checks, where):
    filebase = queue.enqueue(message_from_string(TEXT + BODY))
    path = path_of(queue, filebase)
    data = bytearray(Path(path).read_bytes())
    start = seal_start(data)
    if where == "in the body":
        at = data.index(b"body", data.index(b"Hello"))
        data[at : at + 4] = b"BODY"
    elif where == "in the subject":
        at = data.index(b"sealed")
        data[at : at + 6] = b"SEALED"
    else:  # the range made shorter, as if it covered less than the body
        data[start + 23] ^= 1
    Path(path).write_bytes(data)
    checks.clear()
    msg, _ = queue.dequeue(filebase)
    if where == "in the body":
        # Text of the same length, where text was: the seal holds, and the
        # objects built are the ones checked, with other text in them.
        assert checks == []
        assert msg.get_payload().startswith("Hello.\nA line of the BODY.\n")
    else:
        assert len(checks) == 2
        assert msg["subject"] in ("sealed", "SEALED")


def test_a_large_entry_leaves_out_at_most_max_ranges_strings(queue, checks):
    msg = message_from_string(TEXT + BODY)
    for number in range(MAX_RANGES + 2):
        msg[f"X-Long-{number}"] = "y" * 5000
    filebase = queue.enqueue(msg)
    data = Path(path_of(queue, filebase)).read_bytes()
    assert len(data) - seal_start(data) == TRAILER_SIZE + 8 * MAX_RANGES
    checks.clear()
    assert queue.dequeue(filebase)[0]["X-Long-17"] == "y" * 5000
    assert checks == []


def test_a_large_entry_without_long_strings_is_not_sealed(queue):
    msg = message_from_string(TEXT)
    for number in range(SEAL_MAX // 1000):
        msg[f"X-Header-{number}"] = f"{number:04d}" + "z" * 1000
    filebase = queue.enqueue(msg)
    data = Path(path_of(queue, filebase)).read_bytes()
    assert seal_start(data) == len(data)


def test_a_seal_leaves_out_only_ranges_in_order_within_the_message(queue):
    with pytest.raises(ValueError, match="not in order"):
        config.seal.trailer("f", (b"x" * 10, b"y"), [(5, 2), (4, 1)])
    with pytest.raises(ValueError, match="not in order"):
        config.seal.trailer("f", (b"x" * 10, b"y"), [(5, 6)])
    # Ranges out of order vouch for nothing (the MAC covers them anyway).
    data = b"x" * 100
    trailer = config.seal.trailer("f", (data,), [(10, 5), (50, 5)])
    assert config.seal.valid("f", data + trailer, len(data))
    swapped = trailer[:19] + trailer[27:35] + trailer[19:27] + trailer[35:]
    assert not config.seal.valid("f", data + swapped, len(data))


def test_a_gnu_mailman_site_has_no_seal(tmp_path):
    site = tmp_path / "mailman.cfg"
    site.write_text(f"[paths.here]\nvar_dir: {tmp_path}/mm\n[mailman]\nlayout: here\n")
    config.push("seal-mailman", f"[mailman]\nconfig: {site}\n")
    try:
        assert config.mailman is not None and config.seal is None
        assert config.switchboards.make("in").seal is None
    finally:
        config.pop("seal-mailman")


def test_keys_rotate_and_old_seals_hold_while_their_key_is_kept(
    queue, checks, monkeypatch
):
    monkeypatch.setattr(Seal, "recheck_after", 0.0)
    first = queue.enqueue(message_from_string(TEXT))
    other = Seal(config.seal.path)  # another process, which rotates
    filebases = [first]
    for _ in range(KEPT_KEYS - 1):
        other.rotate()
        filebases.append(queue.enqueue(message_from_string(TEXT)))
    ids = {Path(path_of(queue, f)).read_bytes()[-42:-34] for f in filebases}
    assert len(ids) == KEPT_KEYS  # each written under the key of its time
    checks.clear()
    for filebase in filebases:
        queue.dequeue(filebase)
    assert checks == []
    last = queue.enqueue(message_from_string(TEXT))
    other.rotate()  # the first entry's key is dropped now
    newest = queue.enqueue(message_from_string(TEXT))
    checks.clear()
    queue.dequeue(last)
    queue.dequeue(newest)
    assert checks == []
    again = queue.enqueue(message_from_string(TEXT))
    data = Path(path_of(queue, again)).read_bytes()
    assert data[-42:-34] == list(other._keys)[-1]
    assert len(Path(config.seal.path).read_text().splitlines()) == KEPT_KEYS


def test_an_entry_under_a_dropped_key_is_checked_in_full(queue, checks):
    filebase = queue.enqueue(message_from_string(TEXT))
    for _ in range(KEPT_KEYS):
        config.seal.rotate()
    checks.clear()
    assert queue.dequeue(filebase)[0]["subject"] == "sealed"
    assert len(checks) == 2


@pytest.mark.parametrize(
    "problem", ["mode", "symlink", "empty", "directory", "fifo", "under a file"]
)
def test_a_key_file_that_must_not_be_used_means_no_seals(tmp_path, problem):
    path = tmp_path / "seal.keys"
    Seal(str(path)).trailer("x", (b"",))  # makes it
    if problem == "mode":
        os.chmod(path, 0o640)
    elif problem == "symlink":
        os.rename(path, tmp_path / "real.keys")
        os.symlink(tmp_path / "real.keys", path)
    elif problem == "empty":
        path.write_text("not a key\n")
        os.chmod(path, 0o600)
    elif problem == "directory":
        os.unlink(path)
        path.mkdir()
    elif problem == "fifo":
        os.unlink(path)
        os.mkfifo(path, 0o600)
    else:
        os.unlink(path)
        path.write_text("")
        path = path / "seal.keys"
    seal = Seal(str(path))
    assert seal.trailer("x", (b"",)) is None
    assert seal.problem.startswith(str(path))
    queue = Switchboard("q", str(tmp_path / "q"), seal=seal)
    filebase = queue.enqueue(message_from_string(TEXT))
    data = Path(path_of(queue, filebase)).read_bytes()
    assert seal_start(data) == len(data)
    assert queue.dequeue(filebase)[0]["subject"] == "sealed"


def test_a_reader_never_makes_the_key_file(tmp_path):
    seal = Seal(str(tmp_path / "keys" / "seal.keys"))
    data = b"x" * 10 + Seal(str(tmp_path / "other")).trailer("f", (b"x" * 10,))
    assert not seal.valid("f", data, seal_start(data))
    assert not (tmp_path / "keys").exists() and seal.problem == ""


def test_seal_start_of_what_is_too_short_or_ends_otherwise():
    assert seal_start(b"") == 0
    assert seal_start(b"." * TRAILER_SIZE) == TRAILER_SIZE
    # The layout of a seal (prefix, key id, count, MAC), not ending in STOP.
    data = b"ab" + b"\x80\x04C\x30mqseal2" + b"\0" * 41 + b"!"
    assert seal_start(data) == len(data)
    # More ranges than a seal may have, or a count that does not match.
    data = b"ab" + b"\x80\x04C\x30mqseal2" + b"\0" * 8 + bytes([MAX_RANGES + 1])
    data += b"\0" * 32 + b"."
    assert seal_start(data) == len(data)
    data = data[:-34] + b"\x01" + data[-33:]
    assert seal_start(data) == len(data)
    # An old seal (mqseal1): not one this version makes or trusts.
    data = b"ab" * 20 + b"\x80\x04C\x2fmqseal1" + b"\0" * 40 + b"."
    assert seal_start(data) == len(data)


def test_the_command_rotates_the_key(var_dir, capsys):
    status, out, err = run(capsys, "rotate-key")
    assert (status, err) == (0, "")
    assert out == f"entries are sealed with a new key now ({config.seal.path})\n"
    assert len(Path(config.seal.path).read_text().splitlines()) == 1
    run(capsys, "rotate-key")
    assert len(Path(config.seal.path).read_text().splitlines()) == 2


def test_the_command_says_in_a_line_why_it_cannot(var_dir, capsys):
    run(capsys, "rotate-key")
    os.chmod(config.seal.path, 0o644)
    status, out, err = run(capsys, "rotate-key")
    assert (status, out) == (1, "")
    assert err == (
        "mailqueue: error: [Errno 1] the seal's key file is open to others "
        f"(mode 0644, not 0600): {config.seal.path!r}\n"
    )


def test_only_well_formed_keys_are_taken(tmp_path):
    path = tmp_path / "seal.keys"
    path.write_text(
        f"{'ab' * 4} {'cd' * 32}\nabcd {'cd' * 32}\n{'12' * 8} {'34' * 32}\n"
    )
    os.chmod(path, 0o600)
    seal = Seal(str(path))
    trailer = seal.trailer("f", (b"x",))
    assert trailer[11:19] == bytes.fromhex("12" * 8)
    assert list(seal._keys) == [bytes.fromhex("12" * 8)]  # ids of 8 bytes only


def test_a_key_file_gone_is_no_change_and_no_key(tmp_path):
    path = tmp_path / "seal.keys"
    seal = Seal(str(path))
    data = b"x" + seal.trailer("f", (b"x",))
    os.unlink(path)
    other = b"x" + Seal(str(tmp_path / "other")).trailer("f", (b"x",))
    assert not seal.valid("f", other, 1)  # an unknown key, and nothing to reread
    assert seal.valid("f", data, 1)  # the keys read before still hold
