"""``ipcs`` parsing on recorded samples, and listing/removal of real objects."""

from __future__ import annotations

import os
import pwd

import pytest

from fdpass_conformance.leaks import (
    IpcObject,
    ipcs_command,
    list_ipc_objects,
    mode_from_string,
    parse_ipcs,
    remove_ipc_object,
)

from .helpers import DATA, OwnIpc, needs_ipcmk, needs_linux


def sample(name: str) -> str:
    return (DATA / name).read_text()


# --- parsing recorded output -------------------------------------------------


def test_linux_empty_sample_has_no_objects() -> None:
    assert parse_ipcs(sample("linux-empty.txt")) == []
    assert parse_ipcs(sample("linux-empty.txt"), "linux") == []


def test_linux_objects_sample_is_parsed_exactly() -> None:
    # Real util-linux 2.38.1 output, recorded by tests/data/ipcs/capture_linux.py.
    assert parse_ipcs(sample("linux-objects.txt")) == [
        IpcObject("queue", 0, 0x00000000, 0o600, "root"),
        IpcObject("queue", 1, 0x1234ABCD, 0o640, "root"),
        IpcObject("queue", 2, 0xD848D1F8, 0o666, "nobody"),
        IpcObject("shm", 0, 0x01F109F5, 0o600, "root"),
        IpcObject("shm", 1, 0xBC93BFF5, 0o644, "root"),
        IpcObject("sem", 0, 0xCB2436EC, 0o600, "root"),
        IpcObject("sem", 1, 0x9B4CB658, 0o640, "4242"),
    ]


# The macOS and FreeBSD samples are NOT real output: no such machine is
# available here. They were reconstructed from the printf formats of Apple's
# and FreeBSD's ipcs.c (see tests/data/ipcs/README.md), so these two tests
# check the parser against the documented format, not against a recording.


def test_macos_empty_sample_has_no_objects() -> None:
    assert parse_ipcs(sample("macos-empty.txt")) == []
    assert parse_ipcs(sample("macos-empty.txt"), "macos") == []


def test_macos_objects_sample_is_parsed_exactly() -> None:
    assert parse_ipcs(sample("macos-objects.txt")) == [
        IpcObject("queue", 65536, 0x00000000, 0o600, "alice"),
        IpcObject("queue", 65537, 0x1234ABCD, 0o640, "root"),
        IpcObject("queue", 131074, 0x410FE254, 0o666, "_www"),
        IpcObject("shm", 65536, 0x0052E2C1, 0o600, "postgres"),
        IpcObject("shm", 65537, 0x00000000, 0o644, "siddheshabhang"),
        IpcObject("sem", 65536, 0x0052E2C2, 0o600, "alice"),
        IpcObject("sem", 196609, 0x00000000, 0o666, "501"),
    ]


def test_freebsd_objects_sample_is_parsed_exactly() -> None:
    # FreeBSD prints keys in signed decimal and the 0o100 bit as "a".
    assert parse_ipcs(sample("freebsd-objects.txt"), "freebsd") == [
        IpcObject("queue", 65536, 0x00000000, 0o600, "root"),
        IpcObject("queue", 65537, 0xD848D1F8, 0o640, "www"),
        IpcObject("shm", 65536, 5432001, 0o600, "postgres"),
        IpcObject("sem", 131073, 0x00000000, 0o700, "root"),
    ]


@pytest.mark.parametrize(
    ("mode", "bits"),
    [
        ("--rw-------", 0o600),
        ("--rw-r--r--", 0o644),
        ("--rw-rw-rw-", 0o666),
        ("--ra-ra-ra-", 0o666),
        ("--r--------", 0o400),
        ("-----------", 0o000),
        ("--rwarwarwa", 0o777),
        ("R-rw-------", 0o600),  # a waiting reader is a flag, not a permission
    ],
)
def test_mode_string_to_bits(mode: str, bits: int) -> None:
    assert mode_from_string(mode) == bits


@pytest.mark.parametrize("mode", ["rw-------", "--rw-------x", "--rx-------", "--wr-------"])
def test_bad_mode_string_is_rejected(mode: str) -> None:
    with pytest.raises(ValueError):
        mode_from_string(mode)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world\n",
        "ipcs: unrecognized option\n",
        # a row the parser does not understand must not be skipped silently
        "------ Message Queues --------\nkey msqid owner perms\nbogus row here\n",
        "------ Message Queues --------\n0x00000000 0 root\n",
        "Message Queues:\nT ID KEY MODE OWNER GROUP\nx 1 0x0 --rw------- a b\n",
        "Message Queues:\nq 1 0x0 --rw------- root\n",
    ],
)
def test_unrecognisable_output_raises(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ipcs(text)


def test_unknown_flavor_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown ipcs flavor"):
        parse_ipcs(sample("linux-empty.txt"), "solaris")


def test_describe_is_one_line() -> None:
    obj = IpcObject("queue", 3, 0, 0o600, "root")
    assert obj.describe() == "queue id=3 key=0x00000000 mode=0600 owner=root"


def test_command_per_platform() -> None:
    assert ipcs_command("linux") == (["ipcs", "-q", "-m", "-s"], "linux")
    assert ipcs_command("darwin") == (["ipcs", "-q", "-m", "-s"], "bsd")
    assert ipcs_command("freebsd14") == (["ipcs"], "bsd")


# --- the real ipcs and ipcrm -------------------------------------------------


def _me() -> str:
    # util-linux truncates owner names to 10 characters
    return pwd.getpwuid(os.geteuid()).pw_name[:10]


@needs_linux
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_real_queue_is_listed_with_its_mode(own_ipc: OwnIpc, mode: int) -> None:
    q = own_ipc.queue(mode)
    mine = [obj for obj in list_ipc_objects() if obj.kind == "queue" and obj.id == q.id]
    assert mine == [IpcObject("queue", q.id, 0, mode, _me())]


@needs_linux
@needs_ipcmk
@pytest.mark.parametrize(("kind", "mode"), [("shm", 0o600), ("shm", 0o644), ("sem", 0o640)])
def test_real_shm_and_sem_are_listed_with_their_mode(own_ipc: OwnIpc, kind: str, mode: int) -> None:
    ident = own_ipc.ipcmk(kind, mode)
    mine = [obj for obj in list_ipc_objects() if obj.kind == kind and obj.id == ident]
    assert len(mine) == 1
    assert (mine[0].mode, mine[0].owner) == (mode, _me())


@needs_linux
def test_remove_real_queue_and_again(own_ipc: OwnIpc) -> None:
    own_ipc.queue()
    (obj,) = own_ipc.lister()
    remove_ipc_object(obj)
    assert own_ipc.lister() == []
    remove_ipc_object(obj)  # already gone: not an error


@needs_linux
@needs_ipcmk
@pytest.mark.parametrize("kind", ["shm", "sem"])
def test_remove_real_shm_and_sem(own_ipc: OwnIpc, kind: str) -> None:
    own_ipc.ipcmk(kind, 0o600)
    (obj,) = own_ipc.lister()
    remove_ipc_object(obj)
    assert own_ipc.lister() == []
    remove_ipc_object(obj)


def test_missing_ipcs_is_a_clear_one_line_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    with pytest.raises(RuntimeError, match="ipcs not found on PATH") as info:
        list_ipc_objects()
    assert "\n" not in str(info.value)
    with pytest.raises(RuntimeError, match="ipcrm not found on PATH"):
        remove_ipc_object(IpcObject("queue", 1, 0, 0o600, "root"))
