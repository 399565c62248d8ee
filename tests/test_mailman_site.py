"""Reading a GNU Mailman configuration file as Mailman 3.3 does (no Mailman)."""

import os

import pytest

from mailqueue.configuration import ConfigurationError, config
from mailqueue.mailman_site import (
    MAX_CONFIG_SIZE,
    MailmanSiteError,
    master_state,
    read_site,
)

pytestmark = pytest.mark.timeout(60)


def cfg(tmp_path, text, name="mailman.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_default_layout_is_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILMAN_VAR_DIR", raising=False)
    site = read_site(cfg(tmp_path, "[mailman]\nsite_owner: x@example.com\n"))
    assert site.layout == "here"
    assert site.paths["VAR_DIR"] == str(tmp_path / "var")
    assert site.paths["QUEUE_DIR"] == str(tmp_path / "var" / "queue")
    assert site.paths["LOCK_FILE"] == str(tmp_path / "var" / "locks" / "master.lck")
    assert site.paths["PID_FILE"] == str(tmp_path / "var" / "master.pid")
    assert sorted(n for n, r in site.runners.items() if r["path"]) == [
        "archive", "bad", "bounces", "command", "digest", "in", "nntp", "out",
        "pipeline", "retry", "shunt", "virgin",
    ]  # fmt: skip
    assert site.runners["retry"]["sleep_time"] == "15m"


def test_layouts_and_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILMAN_VAR_DIR", raising=False)
    fhs = read_site(cfg(tmp_path, "[mailman]\nlayout: fhs\n"))
    assert (fhs.paths["QUEUE_DIR"], fhs.paths["LOG_DIR"], fhs.paths["PID_FILE"]) == (
        "/var/spool/mailman",
        "/var/log/mailman",
        "/var/run/mailman/master.pid",
    )
    (tmp_path / "var" / "etc").mkdir(parents=True)
    dev = read_site(cfg(tmp_path / "var" / "etc", "[mailman]\nlayout: dev\n"))
    assert dev.paths["VAR_DIR"] == str(tmp_path / "var")
    own = cfg(
        tmp_path,
        "[mailman]\nlayout: mine\n[paths.mine]\nvar_dir: /srv/mm\n"
        "queue_dir: /spool/$var_dir\n[runner.out]\ninstances: 2\n"
        "[runner.extra]\nclass: my.Runner\n",
    )
    site = read_site(own)
    assert site.paths["QUEUE_DIR"] == "/spool/srv/mm"
    assert site.runners["out"]["instances"] == "2"
    assert site.runners["extra"]["path"] == "$QUEUE_DIR/$name"
    assert site.origins["extra"] == f"{own}, [runner.extra]"
    assert read_site(own, {"MAILMAN_VAR_DIR": "/elsewhere"}).paths["VAR_DIR"] == (
        "/elsewhere"
    )
    source = read_site(
        cfg(tmp_path, "[mailman]\nlayout: fhs\n[paths.fhs]\ntemplate_dir: :source:\n")
    )
    assert source.paths["TEMPLATE_DIR"] == "/nonexistent"


@pytest.mark.parametrize(
    "text, error",
    [
        ("[mailman]\nlayout: nosuch\n", "layout 'nosuch' has no [paths.nosuch]"),
        ("[meta]\nextends: other.cfg\n", "[meta] extends is not followed"),
        ("no section\n", "not INI text (MissingSectionHeaderError)"),
        (
            "[mailman]\nlayout: x\n[paths.x]\nvar_dir: /a/$var_dir\n",
            "cannot expand [paths] ",
        ),
    ],
)
def test_what_cannot_be_read_is_one_line(tmp_path, text, error):
    with pytest.raises(MailmanSiteError, match="GNU Mailman's configuration") as info:
        read_site(cfg(tmp_path, text))
    assert error in str(info.value) and "\n" not in str(info.value)


def test_files_that_are_not_configurations(tmp_path):
    with pytest.raises(MailmanSiteError, match=r"cannot read .*No such file"):
        read_site(str(tmp_path / "missing.cfg"))
    (tmp_path / "latin.cfg").write_bytes(b"[mailman]\n# caf\xe9\n")
    with pytest.raises(MailmanSiteError, match=r"not UTF-8 text \(byte 15\)"):
        read_site(str(tmp_path / "latin.cfg"))
    (tmp_path / "huge.cfg").write_bytes(b"#" * (MAX_CONFIG_SIZE + 1))
    with pytest.raises(MailmanSiteError, match="larger than 1,048,576 bytes"):
        read_site(str(tmp_path / "huge.cfg"))


def test_the_configuration_names_where_the_setting_is(tmp_path):
    with pytest.raises(ConfigurationError, match=r"^configuration 'mm', line 2: "):
        config.push("mm", f"[mailman]\nconfig: {tmp_path / 'missing.cfg'}\n")
    site = cfg(tmp_path, "[mailman]\nlayout: x\n[paths.x]\nvar_dir: /srv/mm\n")
    with pytest.raises(ConfigurationError, match=r"\[runner.in\] class: on a GNU"):
        config.push("mm", f"[mailman]\nconfig: {site}\n[runner.in]\nclass: x.Y\n")
    bad = cfg(tmp_path, "[runner.out]\ninstances: 3\n", "bad.cfg")
    with pytest.raises(ConfigurationError, match=r"bad.cfg, \[runner.out\] instances"):
        config.push("mm", f"[mailman]\nconfig: {bad}\n")
    assert "mm" not in config.layers


def test_master_state_from_files_and_processes(tmp_path):
    site = read_site(
        cfg(tmp_path, f"[mailman]\nlayout: x\n[paths.x]\nvar_dir: {tmp_path}/var\n")
    )
    os.makedirs(tmp_path / "var" / "locks")
    nothing = master_state(site)
    assert (nothing.pid, nothing.alive, nothing.lock, nothing.runners) == (
        None,
        False,
        None,
        {},
    )
    # A pid file naming a process that is not Mailman's master: stale.
    (tmp_path / "var" / "master.pid").write_text(f"{os.getpid()}\n")
    lock = tmp_path / "var" / "locks" / "master.lck"
    lock.write_text("master.lck|mail.example.com|4321|123456789")
    state = master_state(site)
    assert (state.pid, state.alive, state.lock) == (
        os.getpid(),
        False,
        ("mail.example.com", 4321),
    )
    assert state.running("in") == []
    # The process table: a master, its runner children (and not theirs).
    proc = tmp_path / "proc"
    for pid, ppid, args in [
        (100, 1, ["python", "/venv/bin/master", "-C", "x"]),
        (101, 100, ["python", "/venv/bin/runner", "--runner=in:0:1"]),
        (102, 100, ["python", "/venv/bin/runner", "--runner=out:1:2"]),
        (103, 101, ["python", "/venv/bin/runner", "--runner=in:0:1"]),
        (104, 100, []),  # a zombie has no command line
    ]:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(f"{pid} (py (x)) S {ppid} 1 1\n")
        (proc / str(pid) / "cmdline").write_bytes(
            b"\0".join(arg.encode() for arg in args)
        )
    (proc / "self").mkdir()
    (tmp_path / "var" / "master.pid").write_text("100")
    state = master_state(site, str(proc))
    assert state.alive and state.runners == {"in:0:1": 101, "out:1:2": 102}
    assert state.running("out") == [102]
    assert master_state(site, str(tmp_path / "noproc")).alive is False
