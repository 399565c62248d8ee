"""Loading pickles from untrusted files: check every opcode first, then build.

A pickle is a program for a small stack machine, and Python's unpickler runs
it.  Refusing unknown classes (``find_class``) is not enough to make that
safe: an allowed class can still be called with a number that makes it
allocate gigabytes (``bytearray(2**32)``), its attributes can be set on the
class itself (``BUILD``), and a few shared references can stand for more
objects than memory holds.  So :func:`check` walks the whole opcode stream
*without building anything*, keeping only a sketch of each object (its kind,
how deep it is, how large it would be if written out in full), and refuses
anything that a message and its metadata never need.  Only a stream it
accepts is given to :class:`SafeUnpickler`, which still builds nothing but
the allowed classes.

What :func:`check` accepts:

- the opcodes of protocols 0 to 5 that plain data and objects need;
  never persistent ids, the extension registry, out-of-band buffers,
  ``INST``, ``OBJ``, ``NEWOBJ_EX`` or ``DUP``;
- every length within the bytes actually present; memo indices handed out
  in order;
- at most :data:`MAX_DEPTH` levels of nesting and :data:`MAX_OBJECTS`
  objects; a *weight* (one for each object, plus the length of each string,
  counting a shared object as often as it is referred to, which is what
  ``str()``, ``repr()`` or hashing would walk) of at most twice the size of
  the pickle, or :data:`MIN_WEIGHT`;
- at most :data:`MAX_ODD_KEYS` keys that are not strings in one dict or set
  (the hashes of strings are salted; those of numbers can be made to
  collide, which makes building the dict quadratic);
- calls only to allowed callables with arguments of the kinds they need:
  no number for ``bytes`` or ``bytearray``, nothing but scalars for the
  ``datetime`` types and the email defects, no arguments at all when a
  message class is instantiated;
- ``BUILD`` only on an object this same pickle made by instantiating a
  message class or a defect, once, before anything else refers to it, with
  a dict of string keys: never on a class, a function or a shared object,
  and never on an email policy (a policy is always ``compat32`` as it is);
- a class or function only where it is called, never as a value.
"""

from __future__ import annotations

import builtins
import copyreg
import datetime
import email._policybase
import email.charset
import email.errors
import email.header
import email.message
import email.mime.application
import email.mime.audio
import email.mime.base
import email.mime.image
import email.mime.message
import email.mime.multipart
import email.mime.nonmultipart
import email.mime.text
import inspect
import io
import mailbox
import pickle
import pickletools
from collections.abc import Sequence
from typing import Any, Final

from mailqueue.errors import MailqueueError
from mailqueue.message import Message

__all__ = [
    "LONG_STRING",
    "MAX_DEPTH",
    "MAX_OBJECTS",
    "MAX_ODD_KEYS",
    "MIN_WEIGHT",
    "PickleRefused",
    "SafeUnpickler",
    "check",
    "is_plain",
    "load",
]

#: How deeply containers and objects may nest.
MAX_DEPTH = 100
#: How many objects one pickle may make.
MAX_OBJECTS = 1_000_000
#: How many keys that are not strings one dict or set may hold.
MAX_ODD_KEYS = 1_000
#: The weight any pickle may have, however small it is.
MIN_WEIGHT = 1 << 20
#: How long a string or bytes argument :func:`check` reports, when asked.
LONG_STRING = 4096


class PickleRefused(MailqueueError, ValueError):
    """A pickle that :func:`check` or :class:`SafeUnpickler` will not load."""


# What may be built, and how ------------------------------------------------


def _bytes_from_text(text: str, encoding: str = "latin1") -> bytes:
    # Pickle protocols 0 to 2 store bytes as _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise PickleRefused(f"refused to decode bytes with {encoding!r}")
    return text.encode("latin1")


# Private, so typeshed does not declare it; pickles of protocols 0 and 1
# rebuild objects with it.
_RECONSTRUCTOR = copyreg._reconstructor  # type: ignore[attr-defined]

#: Classes whose instances are made without arguments and get their state
#: from ``BUILD``: messages and what they are made of.
_MESSAGE_CLASSES: list[type] = [
    email.message.Message,
    email.charset.Charset,
    email.header.Header,
    email.mime.application.MIMEApplication,
    email.mime.audio.MIMEAudio,
    email.mime.base.MIMEBase,
    email.mime.image.MIMEImage,
    email.mime.message.MIMEMessage,
    email.mime.multipart.MIMEMultipart,
    email.mime.nonmultipart.MIMENonMultipart,
    email.mime.text.MIMEText,
    # GNU Mailman's MIME digests hold the messages of its digest mailbox.
    mailbox.MMDFMessage,
    Message,
]
_POLICY = email._policybase.Compat32
_DEFECTS = [
    value
    for value in vars(email.errors).values()
    if inspect.isclass(value) and issubclass(value, email.errors.MessageDefect)
]


def _mailman_utc() -> datetime.tzinfo:
    # GNU Mailman's UTC time zone (mailman.utilities.datetime.UTC), made
    # with no arguments: read as the standard library's.
    return datetime.UTC


_VALUES: list[Any] = [
    _mailman_utc,
    datetime.date,
    datetime.datetime,
    datetime.time,
    datetime.timedelta,
    datetime.timezone,
]

_ALLOWED: dict[tuple[str, str], Any] = {
    (cls.__module__, cls.__qualname__): cls
    for cls in [*_MESSAGE_CLASSES, _POLICY, *_DEFECTS, *_VALUES]
}
_ALLOWED.update(
    {
        # GNU Mailman's message classes are read as ours: their state is
        # that of an email.message.Message.  Their code is never imported.
        ("mailman.email.message", "Message"): Message,
        ("mailman.email.message", "UserNotification"): Message,
        ("mailman.email.message", "OwnerNotification"): Message,
        ("mailman.email.message", "MultipartDigestMessage"): Message,
        ("mailman.utilities.datetime", "UTC"): _mailman_utc,
        # What mailqueue writes its own messages as (see qfile.dump_checked).
        ("email.message", "Message"): Message,
        # What protocols 0 to 2 need to rebuild objects and bytes, under both
        # their Python 3 and their Python 2 module names.
        ("copyreg", "_reconstructor"): _RECONSTRUCTOR,
        ("copy_reg", "_reconstructor"): _RECONSTRUCTOR,
        ("builtins", "object"): object,
        ("__builtin__", "object"): object,
        ("_codecs", "encode"): _bytes_from_text,
    }
)
for _name in ("set", "frozenset", "bytes", "bytearray"):
    _ALLOWED["builtins", _name] = getattr(builtins, _name)
    _ALLOWED["__builtin__", _name] = getattr(builtins, _name)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds nothing but the allowed classes and plain data.

    Use it only on a stream :func:`check` accepted: by itself it does not
    bound what the allowed classes are asked to do.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise PickleRefused(_refused_global(module, name)) from None

    def persistent_load(self, pid: Any) -> Any:
        raise PickleRefused("refused a persistent id: queue files are self-contained")


def _refused_global(module: str, name: str) -> str:
    return (
        f"refused to load {module}.{name}: queue files may hold only "
        "messages and plain data"
    )


# The sketch of an object ---------------------------------------------------

# Kinds of object.  Scalars are immutable, hashable and contain nothing.
_INT, _FLOAT, _NONE, _STR, _BYTES, _VALUE = range(6)
_BYTEARRAY, _LIST, _TUPLE, _DICT, _SET, _FROZENSET, _GLOBAL, _INSTANCE = range(6, 14)
_SCALARS = frozenset({_INT, _FLOAT, _NONE, _STR, _BYTES, _VALUE})
_MUTABLE = frozenset({_BYTEARRAY, _LIST, _DICT, _SET, _INSTANCE})
_KIND_NAMES = ["int", "float", "None", "str", "bytes", "value", "bytearray"]
_KIND_NAMES += ["list", "tuple", "dict", "set", "frozenset", "global", "object"]


class _Node:
    """What the checker knows of one object the pickle would make.

    *weight* is what writing the object out in full would cost (shared
    objects counted each time it is referred to); *depth* how deeply it
    nests.  Once the memo hands out a second reference to a mutable object,
    or its state is set, it is *frozen*: it may not change any more, so
    weights stay true and no cycle can be made.
    """

    __slots__ = (
        "depth",
        "frozen",
        "hashable",
        "holds_global",
        "kind",
        "odd",
        "value",
        "weight",
    )

    def __init__(self, kind: int, weight: int = 1, value: Any = None) -> None:
        self.kind = kind
        self.weight = weight
        self.depth = 0
        self.frozen = False
        #: For tuples: whether every item is hashable.
        self.hashable = True
        #: For tuples: whether an item is a class or function (only a call
        #: may take such a tuple).
        self.holds_global = False
        #: For containers: how many of the keys or items are not strings.
        self.odd = 0
        #: A global's object; a short tuple's items; an instance's class; a
        #: short string's (start, end) in the data.
        self.value = value


class _Scalar:
    """A scalar: an int, float, None, string or bytes (the most common node).

    It never contains anything or changes, so it has only what varies.
    """

    __slots__ = ("kind", "value", "weight")
    depth: Final = 0
    frozen: Final = False
    hashable: Final = True
    holds_global: Final = False
    odd: Final = 0

    def __init__(self, kind: int, weight: int, value: Any = None) -> None:
        self.kind = kind
        self.weight = weight
        #: A short string's (start, end) in the data.
        self.value = value


#: None: one object, however many times it is made.
_NONE_SCALAR = _Scalar(_NONE, 1)

#: What the stack and the memo hold.
_Sketch = _Node | _Scalar


def _hashable(node: _Sketch) -> bool:
    if node.kind in _SCALARS or node.kind == _FROZENSET:
        return True
    return node.kind == _TUPLE and node.hashable


class _Checker:
    """Walk one pickle's opcodes, keeping a sketch of the stack and the memo."""

    __slots__ = (
        "data",
        "fence",
        "long_strings",
        "marks",
        "max_weight",
        "memo",
        "objects",
        "opcode",
        "position",
        "stack",
        "start",
    )

    def __init__(self, data: bytes, position: int, max_weight: int) -> None:
        self.data = data
        self.start = self.position = self.opcode = position
        self.max_weight = max_weight
        self.stack: list[_Sketch] = []
        self.marks: list[int] = []
        #: Where the items after the last mark start: the stack below is out of reach.
        self.fence = 0
        #: The memo: the pickler numbers its entries 0, 1, 2 ... in order.
        self.memo: list[_Sketch] = []
        self.objects = 0
        #: Where the long string and bytes arguments are, if asked.
        self.long_strings: list[tuple[int, int]] | None = None

    # Errors and bookkeeping ---------------------------------------------

    def refuse(self, why: str) -> PickleRefused:
        # Where the opcode being checked starts, counted from the pickle's start.
        where = self.opcode - self.start
        return PickleRefused(f"not a queue entry: the pickle {why} (at byte {where})")

    def new(self, kind: int, weight: int = 1, value: Any = None) -> _Node:
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise self.refuse(f"makes more than {MAX_OBJECTS:,} objects")
        return _Node(kind, weight, value)

    def push(self, kind: int, weight: int = 1, value: Any = None) -> _Node:
        node = self.new(kind, weight, value)
        self.stack.append(node)
        return node

    def scalar(self, kind: int, weight: int, value: Any = None) -> None:
        """Push a new scalar."""
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise self.refuse(f"makes more than {MAX_OBJECTS:,} objects")
        self.stack.append(_Scalar(kind, weight, value))

    def pop(self) -> _Sketch:
        if len(self.stack) <= self.fence:
            raise self.refuse("takes from an empty stack")
        return self.stack.pop()

    def pop_items(self, count: int) -> list[_Sketch]:
        if len(self.stack) - count < self.fence:
            raise self.refuse("takes from an empty stack")
        items = self.stack[-count:]
        del self.stack[-count:]
        return items

    def top(self) -> _Sketch:
        if len(self.stack) <= self.fence:
            raise self.refuse("looks at an empty stack")
        return self.stack[-1]

    def pop_mark(self) -> list[_Sketch]:
        if not self.marks:
            raise self.refuse("has no mark to go back to")
        mark = self.marks.pop()
        self.fence = self.marks[-1] if self.marks else 0
        items = self.stack[mark:]
        del self.stack[mark:]
        return items

    def contain(self, container: _Node, items: Sequence[_Sketch]) -> None:
        """Account for *items* going into *container*: weight, depth, globals."""
        weight = container.weight
        depth = container.depth
        odd = 0
        for item in items:
            kind = item.kind
            if kind == _GLOBAL or item.holds_global:
                raise self.refuse("holds a class or function as a value")
            weight += item.weight
            if item.depth >= depth:
                depth = item.depth + 1
            if kind != _STR and kind != _BYTES:
                odd += 1
        if weight > self.max_weight:
            raise self.refuse(
                f"would expand to more than {self.max_weight:,} (its weight limit)"
            )
        if depth > MAX_DEPTH:
            raise self.refuse(f"nests more than {MAX_DEPTH} levels deep")
        container.weight = weight
        container.depth = depth
        if container.kind == _LIST:
            # For a set made from the list: how many items hash unsalted.
            container.odd += odd

    def keys(self, container: _Node, keys: Sequence[_Sketch]) -> None:
        """Account for *keys* becoming keys of a dict or members of a set."""
        for key in keys:
            kind = key.kind
            if kind in (_STR, _BYTES):
                continue
            if not _hashable(key):
                raise self.refuse(f"uses a {_KIND_NAMES[kind]} as a key")
            container.odd += 1
        if container.odd > MAX_ODD_KEYS:
            raise self.refuse(
                f"has more than {MAX_ODD_KEYS:,} keys that are not strings"
            )

    def mutable(self, node: _Sketch, kind: int, what: str) -> _Node:
        # No _Scalar is ever a list, dict or set: the isinstance() only tells
        # the type checker so.
        if node.kind != kind or isinstance(node, _Scalar):
            raise self.refuse(f"{what} a {_KIND_NAMES[node.kind]}")
        if node.frozen:
            raise self.refuse(f"{what} an object it refers to elsewhere")
        return node

    # Reading arguments ----------------------------------------------------

    def take(self, size: int) -> int:
        """Skip *size* bytes of argument; return where they start."""
        start = self.position
        if size < 0 or start + size > len(self.data):
            raise self.refuse(f"is truncated (wants {size:,} more bytes)")
        self.position = start + size
        return start

    def number(self, size: int) -> int:
        start = self.take(size)
        return int.from_bytes(self.data[start : start + size], "little")

    def line(self) -> bytes:
        end = self.data.find(b"\n", self.position)
        if end < 0:
            raise self.refuse("is truncated (a line without its end)")
        text = self.data[self.position : end]
        self.position = end + 1
        return text

    def index(self, text: bytes) -> int:
        if not 0 < len(text) <= 10 or not text.isdigit():
            raise self.refuse("has a bad memo index")
        return int(text)

    def text_of(self, node: _Sketch) -> str:
        if node.kind != _STR or node.value is None:
            raise self.refuse("names a global with something that is not a name")
        start, end = node.value
        return self.data[start:end].decode("utf-8", "surrogatepass")

    # The walk ---------------------------------------------------------------

    def run(self) -> tuple[_Sketch, int]:
        """Check up to and including STOP; return the result and where it ends."""
        data = self.data
        end = len(data)
        stack = self.stack
        memo = self.memo
        marks = self.marks
        handlers = _HANDLERS
        position = self.position
        # Kept here, and in self for the handlers only around their calls.
        objects = self.objects
        fence = self.fence
        node: _Sketch | None
        while True:
            if position >= end:
                self.opcode = position
                raise self.refuse("is truncated (no STOP)")
            code = data[position]
            # The opcodes that make up most of a message's pickle are checked
            # here, without a call: MEMOIZE and MARK only here, the others as
            # their handlers would when they can.  An object made here is
            # memoized at once if MEMOIZE follows.
            if code == 0x94:  # MEMOIZE
                if len(stack) <= fence:
                    self.opcode = position
                    raise self.refuse("looks at an empty stack")
                memo.append(stack[-1])
                position += 1
                continue
            if objects >= MAX_OBJECTS:
                node = None  # the handler refuses it, if it makes an object
            elif code == 0x8C and position + 1 < end:  # SHORT_BINUNICODE
                start = position + 2
                stop = start + data[position + 1]
                if stop > end:
                    self.opcode = position
                    raise self.refuse(f"is truncated (wants {stop - end:,} more bytes)")
                node = _Scalar(_STR, stop - start + 1, (start, stop))
                stack.append(node)
                position = stop - 1
            elif code == 0x86 and len(stack) - 2 >= fence:  # TUPLE2
                first, second = stack[-2], stack[-1]
                if type(first) is not _Scalar or type(second) is not _Scalar:
                    node = None
                else:
                    # Two scalars (a header's name and value): nothing to
                    # look into, and never over the weight limit.  A scalar
                    # weighs no more than the bytes that wrote it, so two
                    # different ones weigh less than the pickle; the same one
                    # twice was fetched from the memo at least once (DUP is
                    # refused), by a GET of two bytes or more, and weighs
                    # less than twice the pickle.
                    node = _Node(
                        _TUPLE, 1 + first.weight + second.weight, [first, second]
                    )
                    node.depth = 1
                    node.odd = (first.kind != _STR and first.kind != _BYTES) + (
                        second.kind != _STR and second.kind != _BYTES
                    )
                    stack[-2:] = [node]
            elif code == 0x4E:  # NONE
                node = _NONE_SCALAR
                stack.append(node)
            elif code == 0x29:  # EMPTY_TUPLE
                node = _Node(_TUPLE, 1, [])
                stack.append(node)
            elif code == 0x5D:  # EMPTY_LIST
                node = _Node(_LIST)
                stack.append(node)
            elif code == 0x7D:  # EMPTY_DICT
                node = _Node(_DICT)
                stack.append(node)
            else:
                node = None
            if node is not None:
                objects += 1
                position += 1
                if position < end and data[position] == 0x94:  # MEMOIZE
                    memo.append(node)
                    position += 1
                continue
            if code == 0x28:  # MARK
                if len(marks) >= MAX_DEPTH:
                    self.opcode = position
                    raise self.refuse(f"nests more than {MAX_DEPTH} marks")
                fence = len(stack)
                marks.append(fence)
                position += 1
                continue
            self.opcode = position
            self.position = position + 1
            if code == 0x2E:  # STOP
                if marks or len(stack) != 1:
                    raise self.refuse("stops with other than one object")
                self.objects = objects
                return stack[0], position + 1
            handler = handlers.get(code)
            if handler is None:
                raise self.refuse(_unused_opcode(code))
            self.objects = objects
            self.fence = fence
            handler(self)
            objects = self.objects
            fence = self.fence
            position = self.position

    # Scalars ------------------------------------------------------------------

    def op_sized(self, kind: int, width: int) -> None:
        # A length of *width* bytes, then that many bytes.
        start = self.position + width
        if start > len(self.data):
            raise self.refuse("is truncated (in a length)")
        size = int.from_bytes(self.data[self.position : start], "little")
        end = start + size
        if end > len(self.data):
            raise self.refuse(f"is truncated (wants {size:,} more bytes)")
        self.position = end
        text = (start, end) if size <= 255 else None
        if (
            size >= LONG_STRING
            and self.long_strings is not None
            and kind in (_STR, _BYTES)
        ):
            self.long_strings.append((start, size))
        if kind in _MUTABLE:
            # A bytearray can be referenced again, and is frozen then: a node.
            self.push(kind, 1 + size, text)
        else:
            self.scalar(kind, 1 + size, text)

    def op_fixed(self, kind: int, width: int) -> None:
        self.position += width
        if self.position > len(self.data):
            raise self.refuse(f"is truncated (wants {width} more bytes)")
        self.scalar(kind, 1 + width)

    def op_int(self) -> None:
        self.scalar(_INT, 1 + len(self.line()))

    def op_float(self) -> None:
        self.scalar(_FLOAT, 1 + len(self.line()))

    def op_text_line(self) -> None:
        # STRING and UNICODE: a quoted or escaped line; never a global's name.
        self.scalar(_STR, 1 + len(self.line()))

    # Containers ------------------------------------------------------------

    def op_tuple_of(self, count: int) -> None:
        self.make_tuple(self.pop_items(count))

    def op_tuple(self) -> None:
        self.make_tuple(self.pop_mark())

    def make_tuple(self, items: list[_Sketch]) -> None:
        node = self.new(_TUPLE)
        # A short tuple remembers its items: it may be the arguments of a
        # call, and only a call may take a class or function.
        node.value = items if len(items) <= 4 else None
        values = [
            item for item in items if item.kind != _GLOBAL and not item.holds_global
        ]
        if len(values) != len(items):
            node.holds_global = True
        self.contain(node, values)
        node.odd = sum(item.kind != _STR and item.kind != _BYTES for item in values)
        node.hashable = all(map(_hashable, values))
        self.stack.append(node)

    def op_list(self) -> None:
        node = self.new(_LIST)
        self.contain(node, self.pop_mark())
        self.stack.append(node)

    def op_dict(self) -> None:
        node = self.new(_DICT)
        self.set_items(node, self.pop_mark())
        self.stack.append(node)

    def op_frozenset(self) -> None:
        node = self.new(_FROZENSET)
        items = self.pop_mark()
        self.keys(node, items)
        self.contain(node, items)
        self.stack.append(node)

    def op_append(self) -> None:
        item = self.pop()
        target = self.mutable(self.top(), _LIST, "appends to")
        self.contain(target, [item])

    def op_appends(self) -> None:
        items = self.pop_mark()
        target = self.mutable(self.top(), _LIST, "appends to")
        self.contain(target, items)

    def op_setitem(self) -> None:
        value = self.pop()
        key = self.pop()
        target = self.mutable(self.top(), _DICT, "sets an item of")
        self.set_items(target, [key, value])

    def op_setitems(self) -> None:
        items = self.pop_mark()
        target = self.mutable(self.top(), _DICT, "sets an item of")
        self.set_items(target, items)

    def set_items(self, target: _Node, items: Sequence[_Sketch]) -> None:
        if len(items) % 2:
            raise self.refuse("gives a dict a key without a value")
        # keys() for the keys, then contain() for all: the common case
        # (string keys) in one pass.
        odd_keys = [key for key in items[::2] if key.kind != _STR]
        if odd_keys:
            self.keys(target, odd_keys)
        self.contain(target, items)

    def op_additems(self) -> None:
        items = self.pop_mark()
        target = self.mutable(self.top(), _SET, "adds to")
        self.keys(target, items)
        self.contain(target, items)

    # The stack and the memo ----------------------------------------------

    def op_pop(self) -> None:
        self.pop()

    def op_pop_mark(self) -> None:
        self.pop_mark()

    def op_put(self, width: int) -> None:
        index = self.index(self.line()) if width == 0 else self.number(width)
        self.memoize(index)

    def memoize(self, index: int) -> None:
        # An index far beyond the entries made so far would make the
        # unpickler grow its memo to that size.
        if index > len(self.memo):
            raise self.refuse(f"memoizes at index {index}, out of order")
        if index == len(self.memo):
            self.memo.append(self.top())
        else:
            self.memo[index] = self.top()

    def op_get(self, width: int) -> None:
        index = self.index(self.line()) if width == 0 else self.number(width)
        node = self.memo[index] if index < len(self.memo) else None
        if node is None:
            raise self.refuse(f"refers to memo entry {index}, which was never made")
        if isinstance(node, _Node) and node.kind in _MUTABLE:
            node.frozen = True
        self.stack.append(node)

    # Classes, calls and state ---------------------------------------------

    def op_global(self) -> None:
        module = self.line().decode("utf-8", "surrogatepass")
        name = self.line().decode("utf-8", "surrogatepass")
        self.push_global(module, name)

    def op_stack_global(self) -> None:
        name = self.text_of(self.pop())
        module = self.text_of(self.pop())
        self.push_global(module, name)

    def push_global(self, module: str, name: str) -> None:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise PickleRefused(_refused_global(module, name))
        self.push(_GLOBAL, 1, found)

    def op_newobj(self) -> None:
        if len(self.stack) - 2 < self.fence:
            raise self.refuse("takes from an empty stack")
        arguments = self.stack.pop()
        cls = self.stack.pop()
        if cls.kind != _GLOBAL or not (
            cls.value in _MESSAGE_CLASSES or cls.value is _POLICY
        ):
            raise self.refuse(f"instantiates {_describe(cls)} with NEWOBJ")
        if arguments.kind != _TUPLE or arguments.value != []:
            raise self.refuse("passes arguments to a message class")
        self.push(_INSTANCE, 1, cls.value)

    def op_reduce(self) -> None:
        arguments = self.pop()
        function = self.pop()
        if function.kind != _GLOBAL:
            raise self.refuse(f"calls {_describe(function)}")
        if arguments.kind != _TUPLE or arguments.value is None:
            raise self.refuse("calls with arguments that are not a short tuple")
        self.stack.append(self.call(function.value, arguments.value, arguments))

    def call(self, function: Any, arguments: list[_Sketch], packed: _Sketch) -> _Node:
        kinds = [argument.kind for argument in arguments]
        name = getattr(function, "__name__", "?")
        if function is _RECONSTRUCTOR:
            # _reconstructor(cls, object, None): object.__new__(cls).
            cls = arguments[0].value if kinds and kinds[0] == _GLOBAL else None
            if (
                kinds != [_GLOBAL, _GLOBAL, _NONE]
                or not (cls in _MESSAGE_CLASSES or cls is _POLICY)
                or arguments[1].value is not object
            ):
                raise self.refuse("rebuilds an object that is not a plain message")
            return self.new(_INSTANCE, 1, cls)
        if packed.holds_global:
            raise self.refuse(f"passes a class or function to {name}")
        if function in (set, frozenset):
            if kinds and kinds != [_LIST] and kinds != [_TUPLE]:
                raise self.refuse(f"makes a {name} from a {_KIND_NAMES[kinds[0]]}")
            if arguments and arguments[0].odd > MAX_ODD_KEYS:
                raise self.refuse(
                    f"has more than {MAX_ODD_KEYS:,} keys that are not strings"
                )
            kind = _SET if function is set else _FROZENSET
        elif function in (bytes, bytearray):
            # bytes(n) and bytearray(n) allocate n bytes: never a number.
            if kinds not in ([], [_BYTES], [_LIST], [_TUPLE], [_STR, _STR]):
                raise self.refuse(
                    f"calls {name} with "
                    + ", ".join(_KIND_NAMES[kind] for kind in kinds)
                )
            kind = _BYTES if function is bytes else _BYTEARRAY
        elif function is _bytes_from_text:
            if kinds not in ([_STR], [_STR, _STR]):
                raise self.refuse("decodes bytes from something that is not text")
            kind = _BYTES
        elif function is _mailman_utc:
            if kinds:
                raise self.refuse("makes GNU Mailman's UTC time zone with arguments")
            kind = _VALUE
        elif function in _DEFECTS or function in _VALUES:
            if any(kind not in _SCALARS for kind in kinds):
                raise self.refuse(f"calls {name} with more than plain values")
            kind = _INSTANCE if function in _DEFECTS else _VALUE
        else:
            raise self.refuse(f"calls {name}, which is never called")
        node = self.new(kind, 1, function if kind == _INSTANCE else None)
        self.contain(node, arguments)
        if kind == _SET:
            node.odd = arguments[0].odd if arguments else 0
        return node

    def op_build(self) -> None:
        state = self.pop()
        target = self.top()
        # No _Scalar is ever an instance: as in mutable(), the isinstance()
        # is for the type checker.
        if target.kind != _INSTANCE or isinstance(target, _Scalar):
            raise self.refuse(f"sets the state of {_describe(target)}")
        if target.value is _POLICY:
            raise self.refuse("sets the state of an email policy")
        if target.frozen:
            raise self.refuse("sets the state of an object twice or after using it")
        if state.kind != _DICT or state.odd:
            raise self.refuse("sets an object's state with other than a dict")
        self.contain(target, [state])
        target.frozen = True

    def op_proto(self) -> None:
        if self.number(1) > pickle.HIGHEST_PROTOCOL:
            raise self.refuse("uses an unknown pickle protocol")

    def op_frame(self) -> None:
        size = self.number(8)
        if self.position + size > len(self.data):
            raise self.refuse(f"is truncated (a frame of {size:,} bytes)")


def _describe(node: _Sketch) -> str:
    if node.kind == _GLOBAL:
        return getattr(node.value, "__name__", "a global")
    if node.kind == _INSTANCE:
        return f"a {node.value.__name__}"
    return f"a {_KIND_NAMES[node.kind]}"


def _unused_opcode(code: int) -> str:
    for opcode in _OPCODES_BY_CODE.get(code, ()):
        return f"uses the {opcode.name} opcode, which queue files never need"
    return f"is not a pickle (byte {code:#04x} is not an opcode)"


_OPCODES_BY_CODE: dict[int, list[Any]] = {}


def _opcodes() -> dict[int, Any]:
    for opcode in pickletools.opcodes:
        _OPCODES_BY_CODE.setdefault(ord(opcode.code), []).append(opcode)

    def sized(kind: int, width: int) -> Any:
        return lambda checker: checker.op_sized(kind, width)

    def fixed(kind: int, width: int) -> Any:
        return lambda checker: checker.op_fixed(kind, width)

    def scalar(kind: int) -> Any:
        return lambda checker: checker.scalar(kind, 1)

    def const(kind: int) -> Any:
        return lambda checker: checker.push(kind)

    c = _Checker
    # MARK and MEMOIZE have no handler: _Checker.run() checks them itself.
    table = {
        b"0": c.op_pop,
        b"1": c.op_pop_mark,
        b"F": c.op_float,
        b"G": fixed(_FLOAT, 8),
        b"I": c.op_int,
        b"J": fixed(_INT, 4),
        b"K": fixed(_INT, 1),
        b"L": c.op_int,
        b"M": fixed(_INT, 2),
        b"\x8a": sized(_INT, 1),
        b"\x8b": sized(_INT, 4),
        b"N": scalar(_NONE),
        b"\x88": scalar(_INT),
        b"\x89": scalar(_INT),
        b"S": c.op_text_line,
        b"V": c.op_text_line,
        b"T": sized(_STR, 4),
        b"U": sized(_STR, 1),
        b"X": sized(_STR, 4),
        b"\x8c": sized(_STR, 1),
        b"\x8d": sized(_STR, 8),
        b"B": sized(_BYTES, 4),
        b"C": sized(_BYTES, 1),
        b"\x8e": sized(_BYTES, 8),
        b"\x96": sized(_BYTEARRAY, 8),
        b"]": const(_LIST),
        b")": lambda checker: checker.make_tuple([]),
        b"}": const(_DICT),
        b"\x8f": const(_SET),
        b"l": c.op_list,
        b"t": c.op_tuple,
        b"\x85": lambda checker: checker.op_tuple_of(1),
        b"\x86": lambda checker: checker.op_tuple_of(2),
        b"\x87": lambda checker: checker.op_tuple_of(3),
        b"d": c.op_dict,
        b"\x91": c.op_frozenset,
        b"a": c.op_append,
        b"e": c.op_appends,
        b"s": c.op_setitem,
        b"u": c.op_setitems,
        b"\x90": c.op_additems,
        b"p": lambda checker: checker.op_put(0),
        b"q": lambda checker: checker.op_put(1),
        b"r": lambda checker: checker.op_put(4),
        b"g": lambda checker: checker.op_get(0),
        b"h": lambda checker: checker.op_get(1),
        b"j": lambda checker: checker.op_get(4),
        b"c": c.op_global,
        b"\x93": c.op_stack_global,
        b"\x81": c.op_newobj,
        b"R": c.op_reduce,
        b"b": c.op_build,
        b"\x80": c.op_proto,
        b"\x95": c.op_frame,
    }
    return {code[0]: handler for code, handler in table.items()}


_HANDLERS = _opcodes()


# The entry points -----------------------------------------------------------


def check(
    data: bytes,
    position: int = 0,
    long_strings: list[tuple[int, int]] | None = None,
) -> tuple[str, int]:
    """Check the pickle in *data* that starts at *position*, building nothing.

    Return what it would make (``"message"``, ``"text"``, ``"dict"`` with
    string keys, or ``"other"``) and the position just after its STOP.
    Raise :exc:`PickleRefused` if it breaks any of the rules above.  With
    *long_strings*, the offset and length of every string or bytes argument
    of at least :data:`LONG_STRING` bytes is appended to it, in order.
    """
    checker = _Checker(data, position, max(2 * (len(data) - position), MIN_WEIGHT))
    checker.long_strings = long_strings
    result, end = checker.run()
    if result.kind == _INSTANCE and issubclass(result.value, email.message.Message):
        made = "message"
    elif result.kind == _STR:
        made = "text"
    elif result.kind == _DICT and not result.odd:
        made = "dict"
    else:
        made = "other"
    return made, end


# Objects known to pickle into what check() accepts ---------------------------

_PLAIN_MESSAGES = frozenset(_MESSAGE_CLASSES)
# How deep a plain object may nest: well within MAX_DEPTH, since a message
# adds two levels (the instance and its state) to what it holds.
_PLAIN_DEPTH = MAX_DEPTH // 2


class _NotPlain(Exception):
    pass


def is_plain(obj: Any, size: int) -> bool:
    """True if *obj*, pickled in *size* bytes, makes a pickle :func:`check` accepts.

    A *plain* object is made only of ``str``, ``int``, ``float``, ``bool``
    and ``None``, of lists, tuples and dicts with string keys of those, and
    of messages of the allowed classes with the ``compat32`` policy whose
    state is plain too (exact types: no subclass can change how it
    pickles).  Its pickle uses only opcodes :func:`check` accepts, and its
    weight, objects and depth are counted here at least as :func:`check`
    counts them, stopping as soon as one is over.  So a writer that has just
    pickled a plain object need not check the pickle; when this returns
    False (anything else, or too large or deep), it must.
    """
    budget = [max(2 * size, MIN_WEIGHT), MAX_OBJECTS]
    try:
        _visit_plain(obj, 0, budget)
    except _NotPlain:
        return False
    return True


def _visit_plain(obj: Any, depth: int, budget: list[int]) -> None:
    # Charge obj and what it holds to budget ([weight, objects] left) as
    # check() would count them (never less), or raise _NotPlain.  Scalars
    # inside a container are counted in its loop, without a call.
    kind = type(obj)
    if kind is list or kind is tuple:
        items: Any = obj
        weight, objects = 1, 1
    elif kind is dict:
        items = _str_keyed(obj)
        weight, objects = 1, 1
    elif kind in _PLAIN_MESSAGES:
        state = obj.__dict__
        policy = state.get("policy")
        if type(policy) is not _POLICY or policy.__dict__:
            raise _NotPlain
        # The instance, its state dict and the policy (made, never built);
        # the state's keys are in items, the policy is not.
        items = [item for item in _str_keyed(state) if item is not policy]
        weight, objects = 3, 3
        depth += 1
    elif depth == 0:
        # A scalar by itself (text), or nothing plain.
        items = (obj,)
        weight, objects = 0, 0
    else:
        raise _NotPlain
    if depth >= _PLAIN_DEPTH:
        raise _NotPlain
    for item in items:
        kind = type(item)
        if kind is str:
            # The opcode and the length in UTF-8 (at most 4 a character).
            weight += 1 + (len(item) if item.isascii() else 4 * len(item))
        elif item is None or kind is bool:
            weight += 1
        elif kind is int:
            weight += 10 + item.bit_length() // 8
        elif kind is float:
            weight += 9
        elif depth == 0 and item is obj:
            raise _NotPlain  # obj itself, neither scalar nor container
        else:
            _visit_plain(item, depth + 1, budget)
            continue
        objects += 1
    budget[0] -= weight
    budget[1] -= objects
    if budget[0] < 0 or budget[1] < 0:
        raise _NotPlain


def _str_keyed(mapping: dict[Any, Any]) -> list[Any]:
    # Keys and values, in turn; only string keys are plain.
    items: list[Any] = []
    for key, value in mapping.items():
        if type(key) is not str:
            raise _NotPlain
        items += (key, value)
    return items


def load(data: bytes, position: int = 0) -> Any:
    """Build the pickle in *data* at *position*, which :func:`check` accepted."""
    stream = io.BytesIO(data)
    stream.seek(position)
    return SafeUnpickler(stream).load()


def load_two(data: bytes, end: int) -> tuple[Any, int, Any]:
    """Build the two pickles of *data* that end at *end*: a sealed entry's.

    Only for bytes this site sealed (see :mod:`mailqueue.seal`): what was
    checked as it was written.  Return the first object, where the second
    pickle starts, and the second object.
    """
    stream = io.BytesIO(data)
    # One unpickler for both: its memo outlives the first load, which only
    # a pickle that refers to what another one made could see, and a
    # pickler never writes one.
    unpickler = SafeUnpickler(stream)
    first = unpickler.load()
    boundary = stream.tell()
    second = unpickler.load()
    if stream.tell() != end:
        raise PickleRefused(f"{end - stream.tell():,} bytes follow the metadata")
    return first, boundary, second
