"""Hostile queue files: a pickle assembler, the classics, and generators.

A *case* is one hostile thing to put where a queue entry goes: the bytes of
a file, or a kind of file that is not a regular one, or a pair of names
that collide.  Cases come from three sources:

- :func:`classics`, made by hand: every attack the untrusted-input issue
  names, and the well-known ways a pickle runs code;
- :func:`mutated`, opcode-level fuzzing of valid entries (every protocol,
  Mailman's classes, text entries);
- :func:`programs`, random pickle programs over the opcodes and globals
  the checker allows, which reach the checks a mutation rarely reaches.

Generators take a *chooser* (:class:`RandomChooser`, or
:class:`DrawChooser` under hypothesis), so the same code serves the seeded
full run and hypothesis's shrinking.
"""

from __future__ import annotations

import email.mime.application
import email.mime.multipart
import email.mime.text
import hashlib
import pickle
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mailqueue import message_from_string

CANARY_TEXT = (
    "From: canary@example.com\nTo: test@example.com\nSubject: canary\n"
    "Message-ID: <canary@example.com>\n\nThe entry after the hostile one.\n"
)
LIST_ID = "test.example.com"


@dataclass(frozen=True)
class Case:
    """One hostile thing.  *kind* is ``bytes`` (the file holds *data*) or a
    file type or name collision that :mod:`harness` knows how to make."""

    name: str
    source: str
    data: bytes = b""
    kind: str = "bytes"


# A small pickle assembler ----------------------------------------------------

PROTO = b"\x80\x04"
STOP = b"."
MARK, TUPLE, EMPTY_TUPLE = b"(", b"t", b")"
TUPLE1, TUPLE2, TUPLE3 = b"\x85", b"\x86", b"\x87"
EMPTY_LIST, APPEND, APPENDS, LIST = b"]", b"a", b"e", b"l"
EMPTY_DICT, SETITEM, SETITEMS, DICT = b"}", b"s", b"u", b"d"
EMPTY_SET, ADDITEMS, FROZENSET = b"\x8f", b"\x90", b"\x91"
NONE, TRUE, FALSE, POP = b"N", b"\x88", b"\x89", b"0"
REDUCE, BUILD, NEWOBJ, MEMOIZE = b"R", b"b", b"\x81", b"\x94"


def text(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def data(value: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(value)) + value


def integer(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8b" + struct.pack("<I", len(raw)) + raw


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_glob(module: str, name: str) -> bytes:
    return text(module) + text(name) + b"\x93"


def put(index: int) -> bytes:
    return b"r" + struct.pack("<I", index)


def get(index: int) -> bytes:
    return b"j" + struct.pack("<I", index)


def call(function: bytes, *arguments: bytes) -> bytes:
    return function + MARK + b"".join(arguments) + TUPLE + REDUCE


def pickled(*parts: bytes) -> bytes:
    return PROTO + b"".join(parts) + STOP


def metadata(*items: tuple[bytes, bytes]) -> bytes:
    """A metadata pickle: a dict of the assembled keys and values."""
    body = b"".join(key + value for key, value in items)
    return pickled(EMPTY_DICT, MARK, body, SETITEMS)


def good_metadata(**extra: object) -> bytes:
    return pickle.dumps(
        {"version": 3, "_parsemsg": False, "listid": LIST_ID} | extra, 4
    )


def hostile_message() -> bytes:
    return pickle.dumps(
        message_from_string(CANARY_TEXT.replace("canary", "hostile")), 4
    )


def good_entry(**extra: object) -> bytes:
    return hostile_message() + good_metadata(**extra)


def with_metadata(meta: bytes) -> bytes:
    return hostile_message() + meta


def before_message(*parts: bytes) -> bytes:
    """An entry whose message pickle runs *parts* first (and pops nothing)."""
    return PROTO + b"".join(parts) + hostile_message()[2:] + good_metadata()


#: BUILD state that sets an attribute with setattr(): on a class, for good.
POISON_SLOTS = (
    NONE
    + EMPTY_DICT
    + text("linesep")
    + text("\nBcc: x@example.net\n")
    + SETITEM
    + TUPLE2
)


def laughs(levels: int = 10) -> bytes:
    """A tuple of ten references to a tuple of ten references to ... "lol"."""
    made = text("lol") + put(0) + POP
    for level in range(1, levels + 1):
        made += MARK + get(level - 1) * 10 + TUPLE + put(level) + POP
    return made + get(levels)


# The classics ------------------------------------------------------------------


#: How the harness seals a case's bytes (see harness._seal).
SEAL_KINDS = (
    "seal-forged",
    "seal-truncated",
    "seal-replayed",
    "seal-other-name",
    "seal-other-key",
)


#: A large entry this site sealed, with the case's bytes put into its body.
LONG_STRING_KIND = "seal-long-string"


def classics(marker: str) -> list[Case]:
    """The hand-made corpus; code that runs would make the file *marker*."""
    cases: list[Case] = []

    def add(name: str, payload: bytes, kind: str = "bytes") -> None:
        cases.append(Case(name, "corpus", payload, kind))

    # Code execution, each way a pickle can name a callable, in the message
    # and in the metadata.
    touch = f"touch {marker}"
    runs_code = {
        "posix.system": call(glob("posix", "system"), text(touch)),
        "os.system": call(glob("os", "system"), text(touch)),
        "stack-global-system": call(stack_glob("os", "system"), text(touch)),
        "py2-builtin-eval": call(
            glob("__builtin__", "eval"), text(f"__import__('os').system({touch!r})")
        ),
        "exec": call(glob("builtins", "exec"), text(f"open({marker!r}, 'w').close()")),
        "open": call(glob("builtins", "open"), text(marker), text("w")),
        "subprocess": call(
            glob("subprocess", "call"),
            EMPTY_LIST + MARK + text("touch") + text(marker) + APPENDS,
        ),
        "inst-opcode": MARK + text(touch) + b"ios\nsystem\n",
        "obj-opcode": MARK + glob("os", "system") + text(touch) + b"o",
        "getattr-chain": call(
            call(
                glob("builtins", "getattr"),
                call(glob("pathlib", "Path"), text(marker)),
                text("touch"),
            )
        ),
        "nested-pickle": call(
            glob("pickle", "loads"),
            data(pickled(call(glob("os", "system"), text(touch)))),
        ),
        "reconstructor-base": call(
            glob("copyreg", "_reconstructor"),
            glob("mailqueue.message", "Message"),
            glob("os", "system"),
            text(touch),
        ),
        "codecs-zlib": call(glob("_codecs", "encode"), text("x" * 100), text("zlib")),
        "extension-code": b"\x82\x01",
        "persistent-id": text("x") + b"Q",
        "persistent-id-text": b"Px\n",
        "newobj-ex": glob("os", "system") + EMPTY_TUPLE + EMPTY_DICT + b"\x92",
        "reduce-message-class": call(
            glob("email.mime.text", "MIMEText"), text("x"), text("plain"), text("zlib")
        ),
    }
    for name, payload in runs_code.items():
        add(f"code/{name}/message", pickled(payload) + good_metadata())
        add(
            f"code/{name}/metadata",
            with_metadata(metadata((text("evil"), payload))),
        )

    # Poisoning: state set on a class or a global, or shared state changed.
    for module, name in [
        ("email._policybase", "Compat32"),
        ("email.message", "Message"),
        ("mailqueue.message", "Message"),
        ("email.charset", "Charset"),
        ("email.header", "Header"),
        ("datetime", "datetime"),
        ("_codecs", "encode"),
        ("builtins", "object"),
    ]:
        add(
            f"poison/slots-on-{module}.{name}",
            before_message(glob(module, name), POISON_SLOTS, BUILD, POP),
        )
        dict_state = EMPTY_DICT + text("_default_type") + text("text/html") + SETITEM
        add(
            f"poison/dict-on-{module}.{name}",
            before_message(glob(module, name), dict_state, BUILD, POP),
        )
    policy_with_state = (
        glob("email._policybase", "Compat32")
        + EMPTY_TUPLE
        + NEWOBJ
        + EMPTY_DICT
        + text("linesep")
        + text("\nBcc: x@example.net\n")
        + SETITEM
        + BUILD
    )
    add(
        "poison/policy-instance-state",
        with_metadata(metadata((text("p"), policy_with_state))),
    )
    instance = glob("email.message", "Message") + EMPTY_TUPLE + NEWOBJ + put(0)
    add(
        "poison/build-twice",
        with_metadata(
            metadata(
                (text("m"), instance + EMPTY_DICT + BUILD + EMPTY_DICT + BUILD),
            )
        ),
    )
    add(
        "poison/build-after-sharing",
        with_metadata(
            metadata((text("m"), instance), (text("n"), get(0) + EMPTY_DICT + BUILD))
        ),
    )
    add(
        "poison/cycle-through-state",
        with_metadata(
            metadata(
                (
                    text("m"),
                    instance + EMPTY_DICT + text("_payload") + get(0) + SETITEM + BUILD,
                )
            )
        ),
    )
    add(
        "poison/cycle-in-list",
        with_metadata(metadata((text("l"), EMPTY_LIST + put(0) + get(0) + APPEND))),
    )
    add(
        "poison/setitem-on-message",
        with_metadata(
            metadata(
                (text("m"), instance + text("To") + text("x@example.net") + SETITEM)
            )
        ),
    )
    add(
        "poison/appends-to-bytearray",
        with_metadata(
            metadata(
                (
                    text("b"),
                    call(glob("builtins", "bytearray"), data(b"x"))
                    + MARK
                    + integer(1)
                    + APPENDS,
                )
            )
        ),
    )
    add(
        "poison/global-as-value",
        with_metadata(metadata((text("f"), glob("_codecs", "encode")))),
    )
    add(
        "poison/class-as-value",
        with_metadata(metadata((text("c"), glob("email.message", "Message")))),
    )
    add(
        "poison/global-in-tuple",
        with_metadata(metadata((text("t"), glob("builtins", "set") + TUPLE1))),
    )
    add(
        "poison/header-text-injection",
        good_entry(listid="test.example.com\n2026-01-01 ERROR forged log line"),
    )

    # Crashes: nesting deep enough to overflow C recursion, as a key and as
    # a value.
    add(
        "crash/tuple-key-1e6-deep",
        with_metadata(pickled(EMPTY_DICT, NONE, TUPLE1 * 1_000_000, NONE, SETITEM)),
    )
    add(
        "crash/tuple-value-1e5-deep",
        with_metadata(metadata((text("deep"), NONE + TUPLE1 * 100_000))),
    )
    add(
        "crash/list-1e5-deep",
        with_metadata(metadata((text("deep"), EMPTY_LIST * 100_000 + APPEND * 99_999))),
    )
    add(
        "crash/dict-1000-deep",
        with_metadata(
            metadata(
                (
                    text("deep"),
                    (EMPTY_DICT + text("k")) * 1000 + EMPTY_DICT + SETITEM * 1000,
                )
            )
        ),
    )
    add(
        "crash/frozenset-1e5-deep",
        with_metadata(metadata((text("deep"), (MARK * 100 + FROZENSET * 100) * 1000))),
    )
    add("crash/marks-1e6", with_metadata(metadata((text("m"), MARK * 1_000_000))))

    # Recovery that raised: deep metadata, bad _bak_count, unwritable values.
    add(
        "recovery/metadata-1000-deep",
        with_metadata(metadata((text("deep"), EMPTY_LIST * 1000 + APPEND * 999))),
    )
    for label, value in [
        ("text", text("x")),
        ("none", NONE),
        ("list", EMPTY_LIST),
        ("negative", integer(-5)),
        ("bool", TRUE),
        ("huge", integer(2**200)),
        ("float", b"G" + struct.pack(">d", 1.5)),
    ]:
        add(
            f"recovery/bak-count-{label}",
            with_metadata(metadata((text("_bak_count"), value))),
        )
    add(
        "recovery/function-in-metadata",
        with_metadata(metadata((text("f"), glob("copyreg", "_reconstructor")))),
    )

    # Memory and time bombs.
    for function in ("bytearray", "bytes"):
        add(
            f"bomb/{function}-2**32",
            with_metadata(
                metadata((text("b"), call(glob("builtins", function), integer(2**32))))
            ),
        )
        add(
            f"bomb/{function}-2**40",
            with_metadata(
                metadata((text("b"), call(glob("builtins", function), integer(2**40))))
            ),
        )
    add(
        "bomb/reconstructor-bytearray",
        pickled(
            call(
                glob("copyreg", "_reconstructor"),
                glob("mailqueue.message", "Message"),
                glob("builtins", "bytearray"),
                integer(2**32),
            )
        )
        + good_metadata(),
    )
    add("bomb/listid-10x10-shared", with_metadata(metadata((text("listid"), laughs()))))
    add(
        "bomb/listname-10x10-shared",
        with_metadata(metadata((text("listname"), laughs()))),
    )
    doubling = EMPTY_LIST + text("x" * 100) + APPEND + put(0)
    for level in range(1, 40):
        doubling += EMPTY_LIST + MARK + get(level - 1) * 2 + APPENDS + put(level)
    add("bomb/list-doubling-2**40", with_metadata(metadata((text("d"), doubling))))
    big = text("x" * 1_000_000) + put(0)
    add(
        "bomb/1MB-string-1000-refs",
        with_metadata(metadata((text("s"), big + MARK + get(0) * 1000 + TUPLE))),
    )
    add(
        "bomb/memo-index-2**32",
        with_metadata(metadata((text("m"), NONE + b"r\xff\xff\xff\xff"))),
    )
    add(
        "bomb/memo-get-missing",
        with_metadata(metadata((text("m"), b"j\xff\xff\xff\x7f"))),
    )
    add(
        "bomb/binbytes8-2**60",
        with_metadata(PROTO + b"\x8e" + struct.pack("<Q", 2**60)),
    )
    add(
        "bomb/bytearray8-2**40",
        with_metadata(PROTO + b"\x96" + struct.pack("<Q", 2**40)),
    )
    add("bomb/frame-2**62", with_metadata(PROTO + b"\x95" + struct.pack("<Q", 2**62)))
    add("bomb/long4-2**31", with_metadata(PROTO + b"\x8b" + struct.pack("<I", 2**31)))
    add(
        "bomb/long-text-100000-digits",
        with_metadata(metadata((text("n"), b"L" + b"9" * 100_000 + b"L\n"))),
    )
    collide = MARK + b"".join(
        integer(index * (2**61 - 1)) + NONE for index in range(1, 50_001)
    )
    add(
        "bomb/colliding-int-keys",
        with_metadata(metadata((text("d"), EMPTY_DICT + collide + SETITEMS))),
    )
    members = MARK + b"".join(
        integer(index * (2**61 - 1)) for index in range(1, 50_001)
    )
    add(
        "bomb/colliding-set-members",
        with_metadata(
            metadata(
                (
                    text("s"),
                    call(glob("builtins", "set"), EMPTY_LIST + members + APPENDS),
                )
            )
        ),
    )
    add(
        "bomb/colliding-frozenset",
        with_metadata(metadata((text("s"), members + FROZENSET))),
    )
    add(
        "bomb/timedelta-overflow",
        with_metadata(
            metadata((text("t"), call(glob("datetime", "timedelta"), integer(10**12))))
        ),
    )
    add(
        "bomb/huge-header",
        pickle.dumps(message_from_string("From: " + "a," * 500_000 + "\n\nx\n"), 4)
        + good_metadata(),
    )
    add(
        "bomb/many-headers",
        pickle.dumps(message_from_string("X-A: b\n" * 30_000 + "\nx\n"), 4)
        + good_metadata(),
    )
    add("bomb/larger-than-the-limit", b"", kind="oversized")

    # Type confusion in the keys the implementation reads.
    for key in ("listid", "listname", "whichq", "lang", "version", "_parsemsg"):
        for label, value in [
            ("list", EMPTY_LIST),
            ("dict", EMPTY_DICT),
            ("int", integer(7)),
            ("bytes", data(b"test.example.com")),
            ("none", NONE),
            ("message", instance + EMPTY_DICT + BUILD),
            ("long-text", text("x" * 100_000)),
            ("dots", text("../../../../tmp/escape")),
        ]:
            add(f"types/{key}-{label}", with_metadata(metadata((text(key), value))))
    add(
        "types/text-without-parsemsg",
        pickle.dumps("From: a\n\nb\n", 4) + good_metadata(),
    )
    add("types/parsemsg-without-text", good_entry(_parsemsg=True))
    add(
        "types/parsemsg-binary-text",
        pickle.dumps("\x00\udcff" * 10, 4) + good_metadata(_parsemsg=True),
    )
    add("types/message-is-a-number", pickled(integer(42)) + good_metadata())
    add("types/metadata-is-a-list", hostile_message() + pickled(EMPTY_LIST))
    add("types/metadata-int-key", with_metadata(pickle.dumps({1: "x", "a": 2}, 4)))
    add("types/metadata-tuple-key", with_metadata(pickle.dumps({(1, 2): "x"}, 4)))
    weird = glob("mailqueue.message", "Message") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT
    for label, state in [
        ("headers-dict", text("_headers") + EMPTY_DICT),
        ("headers-int", text("_headers") + integer(5)),
        ("payload-int", text("_payload") + integer(5)),
        ("payload-list-of-ints", text("_payload") + EMPTY_LIST + integer(1) + APPEND),
        ("policy-int", text("policy") + integer(5)),
        ("policy-missing", text("_headers") + EMPTY_LIST),
        ("charset-text", text("_charset") + text("no-such-charset")),
        ("defects-int", text("defects") + integer(3)),
        ("class-key", text("__class__") + text("x")),
        ("dict-key", text("__dict__") + EMPTY_DICT),
    ]:
        add(
            f"types/message-{label}",
            pickled(weird, MARK, state, SETITEMS, BUILD) + good_metadata(),
        )
    multipart = email.mime.multipart.MIMEMultipart()
    multipart["From"] = "hostile@example.com"
    multipart.attach(email.mime.text.MIMEText("h\u00e9llo", "plain", "utf-8"))
    multipart.attach(email.mime.application.MIMEApplication(b"\x00\x01" * 100))
    add("types/valid-multipart", pickle.dumps(multipart, 4) + good_metadata())
    shared_part = pickle.dumps(multipart, 4)
    add(
        "types/valid-protocol-0",
        pickle.dumps(multipart, 0) + pickle.dumps({"listid": LIST_ID}, 0),
    )
    add("types/trailing-bytes", good_entry() + b"trailing")
    add("types/three-pickles", good_entry() + good_metadata())
    add("types/empty", b"")
    add("types/only-message", hostile_message())
    add("types/truncated", good_entry()[:-3])
    add("types/not-a-pickle", b"From: a@example.com\n\nnot a pickle\n")
    add("types/shared-subpart", shared_part + good_metadata())

    # Seals that must not vouch for anything: forged, truncated, copied from
    # another entry, made for another file base, made under another key.
    # Each on an entry that runs code, and on one that poisons a class.
    sealed = {
        "code": pickled(runs_code["os.system"]) + good_metadata(),
        "poison": with_metadata(
            metadata((text("evil"), call(glob("os", "system"), text(touch))))
        ),
    }
    for what, payload in sealed.items():
        for seal in SEAL_KINDS:
            add(f"seal/{seal}/{what}", payload, kind=seal)
        # Within the range a large entry's seal leaves out (its body): the
        # seal holds, and the bytes can only be the characters of the body.
        add(f"long-string/{what}", payload, kind=LONG_STRING_KIND)
    # A protocol 0 pickle that runs code is text: it becomes the body's text.
    as_text = b"cos\nsystem\n(V" + touch.encode() + b"\ntR."
    add("long-string/code-as-text", as_text, kind=LONG_STRING_KIND)

    # Files that are not regular files, and names that collide.
    for kind in (
        "fifo",
        "symlink-to-fifo",
        "directory",
        "symlink-loop",
        "dangling-symlink",
        "symlink-to-entry-outside",
        "char-device",
        "zero-device",
        "socket",
        "unreadable",
        "pck-and-bak",
        "bak-and-psv",
        "stray-name",
    ):
        add(f"file/{kind}", b"", kind=kind)
    return cases


# Choosers: where the generators' choices come from -----------------------------


class RandomChooser:
    """Choices from a seeded :class:`random.Random`."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        return self.random.randint(low, high)

    def choice(self, options: list):
        return options[self.integer(0, len(options) - 1)]

    def bytes(self, size: int) -> bytes:
        return self.random.randbytes(size)


class DrawChooser(RandomChooser):
    """Choices drawn by hypothesis, so that it can shrink a failing case."""

    def __init__(self, draw: Callable) -> None:
        from hypothesis import strategies

        self.draw = draw
        self.strategies = strategies

    def integer(self, low: int, high: int) -> int:
        return self.draw(self.strategies.integers(low, high))

    def bytes(self, size: int) -> bytes:
        return self.draw(self.strategies.binary(min_size=size, max_size=size))


# Opcode-level fuzzing of valid entries ---------------------------------------------


def seeds() -> list[bytes]:
    """Valid entries to mutate: every protocol, text entries, multipart."""
    simple = message_from_string(CANARY_TEXT.replace("canary", "seed"))
    multipart = email.mime.multipart.MIMEMultipart()
    multipart["From"] = "seed@example.com"
    multipart.attach(email.mime.text.MIMEText("h\u00e9llo", "plain", "utf-8"))
    broken = message_from_string("From: seed@example.com\nbroken line\n\nbody\n")
    meta = {
        "version": 3,
        "_parsemsg": False,
        "listid": LIST_ID,
        "recipients": {"a@example.com", "b@example.com"},
        "data": b"\x00\xff",
        "tries": 2,
        "when": 1.5,
        "nested": [{"a": (1, "b")}],
    }
    found = []
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for msg in (simple, multipart, broken):
            found.append(pickle.dumps(msg, protocol) + pickle.dumps(meta, protocol))
        found.append(
            pickle.dumps(CANARY_TEXT, protocol)
            + pickle.dumps(meta | {"_parsemsg": True}, protocol)
        )
    return found


#: Snippets a mutation may insert: opcodes that change the stack, the memo or
#: objects, and globals of every kind.
SNIPPETS = [
    MARK,
    TUPLE,
    TUPLE1,
    TUPLE2,
    TUPLE3,
    EMPTY_TUPLE,
    EMPTY_LIST,
    APPEND,
    APPENDS,
    LIST,
    EMPTY_DICT,
    SETITEM,
    SETITEMS,
    DICT,
    EMPTY_SET,
    ADDITEMS,
    FROZENSET,
    NONE,
    POP,
    b"1",
    b"2",
    REDUCE,
    BUILD,
    NEWOBJ,
    MEMOIZE,
    b"h\x00",
    b"h\x01",
    b"h\x05",
    b"q\x00",
    b"r\xff\xff\x00\x00",
    b"j\x00\x00\x00\x00",
    STOP,
    b"\x95" + struct.pack("<Q", 2**40),
    integer(2**32),
    integer(-1),
    text("x"),
    data(b"y"),
    text("_bak_count"),
    text("listid"),
    glob("builtins", "bytearray"),
    glob("builtins", "set"),
    glob("builtins", "bytes"),
    glob("email._policybase", "Compat32"),
    glob("email.message", "Message"),
    glob("copyreg", "_reconstructor"),
    glob("builtins", "object"),
    glob("_codecs", "encode"),
    glob("datetime", "timedelta"),
    glob("email.errors", "HeaderDefect"),
    glob("os", "system"),
    stack_glob("builtins", "eval"),
    b"\x82\x01",
    b"Q",
]


def mutated(chooser: RandomChooser, seed_entries: list[bytes]) -> bytes:
    """A valid entry with one to four opcode-level mutations."""
    entry = bytearray(chooser.choice(seed_entries))
    for _ in range(chooser.integer(1, 4)):
        if not entry:
            entry += chooser.choice(seed_entries)
        where = chooser.integer(0, len(entry) - 1)
        how = chooser.integer(0, 8)
        if how == 0:  # flip a byte
            entry[where] ^= 1 << chooser.integer(0, 7)
        elif how == 1:  # a random byte
            entry[where] = chooser.integer(0, 255)
        elif how in (2, 3):  # insert a snippet
            entry[where:where] = chooser.choice(SNIPPETS)
        elif how == 4:  # delete a span
            del entry[where : where + chooser.integer(1, 16)]
        elif how == 5:  # repeat a span
            span = entry[where : where + chooser.integer(1, 32)]
            entry[where:where] = span * chooser.integer(1, 64)
        elif how == 6:  # truncate
            del entry[where:]
        elif how == 7:  # a length field made huge
            entry[where : where + 4] = struct.pack(
                "<I", chooser.choice([2**31, 2**32 - 1, 255, 0])
            )
        else:  # splice in part of another entry
            other = chooser.choice(seed_entries)
            start = chooser.integer(0, len(other) - 1)
            entry[where:] = other[start:]
    return bytes(entry)


# Random pickle programs ---------------------------------------------------

_CALLABLES = [
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
    ("copyreg", "_reconstructor"),
    ("datetime", "datetime"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("email.errors", "HeaderDefect"),
    ("email.errors", "MissingHeaderBodySeparatorDefect"),
    ("email.message", "Message"),
    ("mailqueue.message", "Message"),
    ("mailman.email.message", "Message"),
    ("email.charset", "Charset"),
    ("email.header", "Header"),
    ("email._policybase", "Compat32"),
    ("builtins", "object"),
]


class _Program:
    def __init__(self, chooser: RandomChooser) -> None:
        self.chooser = chooser
        self.memo = 0

    def value(self, depth: int = 0) -> bytes:
        c = self.chooser
        leaf = depth > 6 or c.integer(0, 3) == 0
        if leaf:
            kind = c.integer(0, 9)
            out = [
                lambda: integer(c.choice([0, 1, 255, 2**31, 2**32, -1, 2**64, 10**30])),
                lambda: text(
                    c.choice(["", "x", LIST_ID, "_bak_count", "in", "bad", "\n"])
                ),
                lambda: data(c.bytes(c.integer(0, 8))),
                lambda: NONE,
                lambda: c.choice([TRUE, FALSE]),
                lambda: b"G" + struct.pack(">d", c.choice([0.0, 1e308, float("nan")])),
                lambda: glob(*c.choice(_CALLABLES)),
                lambda: get(c.integer(0, self.memo + 1)),
                lambda: text("x" * c.choice([1, 300, 70_000])),
                lambda: integer(c.integer(-5, 5)),
            ][kind]()
        else:
            kind = c.integer(0, 11)

            def items() -> bytes:
                return b"".join(self.value(depth + 1) for _ in range(c.integer(0, 4)))

            if kind == 0:
                out = EMPTY_LIST + MARK + items() + APPENDS
            elif kind == 1:
                out = MARK + items() + TUPLE
            elif kind == 2:
                pairs = [self.value(depth + 1) for _ in range(2 * c.integer(0, 3))]
                out = EMPTY_DICT + MARK + b"".join(pairs) + SETITEMS
            elif kind == 3:
                out = EMPTY_SET + MARK + items() + ADDITEMS
            elif kind == 4:
                out = MARK + items() + FROZENSET
            elif kind in (5, 6, 7):
                out = glob(*c.choice(_CALLABLES)) + MARK + items() + TUPLE + REDUCE
            elif kind == 8:
                out = glob(*c.choice(_CALLABLES)) + EMPTY_TUPLE + NEWOBJ
                out += self.value(depth + 1) + BUILD
            elif kind == 9:
                out = self.value(depth + 1) + self.value(depth + 1) + BUILD
            elif kind == 10:
                out = self.value(depth + 1) + TUPLE1 * c.integer(1, 200)
            else:
                out = items() + c.choice([b"", POP, b"1", b"2"]) + NONE
        if c.integer(0, 2) == 0:
            out += put(self.memo)
            self.memo += 1
        return out


def program(chooser: RandomChooser) -> bytes:
    """A random pickle program, as the message or as a metadata value."""
    maker = _Program(chooser)
    value = maker.value()
    if chooser.integer(0, 3) == 0:
        return pickled(value) + good_metadata()
    return with_metadata(
        pickled(
            EMPTY_DICT,
            text(chooser.choice(["x", "listid", "_bak_count", "whichq"])),
            value,
            SETITEM,
        )
    )


def generated(count: int, seed: int = 0) -> Iterator[Case]:
    """*count* generated cases: half mutations, half random programs."""
    entries = seeds()
    for number in range(count):
        chooser = RandomChooser(seed * 1_000_003 + number)
        if number % 2:
            yield Case(f"program/{seed}/{number}", "program", program(chooser))
        else:
            yield Case(
                f"mutation/{seed}/{number}", "mutation", mutated(chooser, entries)
            )


def case_digest(case: Case) -> str:
    return hashlib.sha1(case.name.encode() + case.data).hexdigest()
