"""The built-in runners: in -> out -> Maildir, and retry when delivery fails."""

import mailbox
import os

from mailqueue import config, create_list, message_from_string
from mailqueue.runners import (
    IncomingRunner,
    OutgoingRunner,
    RetryRunner,
    VirginRunner,
    maildir,
)


def test_a_failed_delivery_goes_to_retry_and_back_to_out(var_dir):
    mlist = create_list("test@example.com")
    msg = message_from_string("From: aperson@example.com\nSubject: hi\n\nHi.\n")
    config.switchboards["in"].enqueue(msg, listid=mlist.list_id)
    assert IncomingRunner("in")._one_iteration() == 1
    # Something in the way of the list's Maildir: delivery fails.
    os.makedirs(os.path.dirname(maildir(mlist)))
    open(maildir(mlist), "w").close()
    assert OutgoingRunner("out")._one_iteration() == 1
    assert len(config.switchboards["retry"].files) == 1
    assert config.switchboards["out"].files == []

    os.remove(maildir(mlist))
    assert RetryRunner("retry")._one_iteration() == 1
    assert OutgoingRunner("out")._one_iteration() == 1
    [delivered] = mailbox.Maildir(maildir(mlist), create=False)
    assert delivered["List-Id"] == "<test.example.com>"
    assert delivered["Subject"] == "hi"


def test_delivery_into_a_maildir_another_runner_is_still_making(var_dir):
    # Two out runners deliver the first messages of a list at once: one has
    # made the Maildir's directory and not yet its tmp/, new/ and cur/ when
    # the other looks.  The other delivers all the same (it once failed with
    # ENOENT on tmp/ and sent the message to retry).
    mlist = create_list("test@example.com")
    msg = message_from_string("From: aperson@example.com\nSubject: hi\n\nHi.\n")
    config.switchboards["out"].enqueue(msg, listid=mlist.list_id)
    os.makedirs(maildir(mlist))
    assert OutgoingRunner("out")._one_iteration() == 1
    assert config.switchboards["retry"].files == []
    [delivered] = mailbox.Maildir(maildir(mlist), create=False)
    assert delivered["Subject"] == "hi"


def test_retry_always_waits_and_virgin_goes_straight_out(var_dir, monkeypatch):
    naps = []
    monkeypatch.setattr("time.sleep", naps.append)
    RetryRunner("retry")._snooze(5)  # even after a pass that found entries
    assert naps == [900.0]
    mlist = create_list("test@example.com")
    config.switchboards["virgin"].enqueue(
        message_from_string("Subject: notice\n\nHi.\n"), listid=mlist.list_id
    )
    assert VirginRunner("virgin")._one_iteration() == 1
    assert len(config.switchboards["out"].files) == 1
