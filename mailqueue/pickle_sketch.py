"""What the pickle checker knows while it walks: a sketch of each object.

The checker (:mod:`mailqueue.pickle_checker`) builds nothing.  For each
object a pickle would make it keeps a *sketch*: its kind, how deeply it
nests, what writing it out in full would weigh.  :class:`Walk` holds the
sketches of the stack and the memo, counts the objects made, reads the
arguments of opcodes, and refuses what goes over a limit of
:mod:`mailqueue.pickle_rules`.  What each opcode does with them is the
checker's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from mailqueue.pickle_rules import MAX_DEPTH, MAX_OBJECTS, MAX_ODD_KEYS, PickleRefused

__all__ = [
    "BYTEARRAY",
    "BYTES",
    "DICT",
    "FLOAT",
    "FROZENSET",
    "GLOBAL",
    "INSTANCE",
    "INT",
    "KIND_NAMES",
    "LIST",
    "MUTABLE",
    "NONE",
    "NONE_SCALAR",
    "SCALARS",
    "SET",
    "STR",
    "TUPLE",
    "VALUE",
    "Node",
    "Scalar",
    "Sketch",
    "Walk",
    "describe",
    "hashable",
]

# Kinds of object.  Scalars are immutable, hashable and contain nothing.
INT = 0  #: A scalar kind: an int (or a bool).
FLOAT = 1  #: A scalar kind: a float.
NONE = 2  #: A scalar kind: None.
STR = 3  #: A scalar kind: a str.
BYTES = 4  #: A scalar kind: a bytes.
VALUE = 5  #: A scalar kind: an allowed value (a date, a time zone...).
BYTEARRAY = 6  #: A mutable kind: a bytearray.
LIST = 7  #: A mutable kind: a list.
TUPLE = 8  #: A kind: a tuple.
DICT = 9  #: A mutable kind: a dict.
SET = 10  #: A mutable kind: a set.
FROZENSET = 11  #: A kind: a frozenset.
GLOBAL = 12  #: A kind: an allowed class or function, named by the pickle.
INSTANCE = 13  #: A mutable kind: an instance of an allowed class.
#: The kinds of scalar.
SCALARS = frozenset({INT, FLOAT, NONE, STR, BYTES, VALUE})
#: The kinds of object that can change after they are made.
MUTABLE = frozenset({BYTEARRAY, LIST, DICT, SET, INSTANCE})
#: Each kind's name, as refusals say it.
KIND_NAMES = ["int", "float", "None", "str", "bytes", "value", "bytearray"]
KIND_NAMES += ["list", "tuple", "dict", "set", "frozenset", "global", "object"]


class Node:
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

    def __init__(
        self,
        kind: int,
        weight: int = 1,
        value: Any = None,
        depth: int = 0,
        odd: int = 0,
    ) -> None:
        self.kind = kind
        self.weight = weight
        self.depth = depth
        self.frozen = False
        #: For tuples: whether every item is hashable.
        self.hashable = True
        #: For tuples: whether an item is a class or function (only a call
        #: may take such a tuple).
        self.holds_global = False
        #: For containers: how many of the keys or items are not strings.
        self.odd = odd
        #: A global's object; a short tuple's items; an instance's class; a
        #: short string's (start, end) in the data.
        self.value = value


class Scalar:
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
NONE_SCALAR = Scalar(NONE, 1)

#: What the stack and the memo hold.
Sketch = Node | Scalar


def hashable(node: Sketch) -> bool:
    """Whether the object *node* sketches can be a key."""
    if node.kind in SCALARS or node.kind == FROZENSET:
        return True
    return node.kind == TUPLE and node.hashable


def describe(node: Sketch) -> str:
    """The object *node* sketches, as a refusal names it."""
    if node.kind == GLOBAL:
        return getattr(node.value, "__name__", "a global")
    if node.kind == INSTANCE:
        return f"a {node.value.__name__}"
    return f"a {KIND_NAMES[node.kind]}"


class Walk:
    """The state of a walk through one pickle: the stack, the memo, the counts."""

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

    def __init__(
        self,
        data: bytes,
        position: int,
        max_weight: int,
        long_strings: list[tuple[int, int]] | None = None,
    ) -> None:
        self.data = data
        self.start = self.position = self.opcode = position
        self.max_weight = max_weight
        self.stack: list[Sketch] = []
        self.marks: list[int] = []
        #: Where the items after the last mark start: the stack below is out of reach.
        self.fence = 0
        #: The memo: the pickler numbers its entries 0, 1, 2 ... in order.
        self.memo: list[Sketch] = []
        self.objects = 0
        #: Where the long string and bytes arguments are, if asked.
        self.long_strings = long_strings

    # Errors and bookkeeping ---------------------------------------------

    def refuse(self, why: str) -> PickleRefused:
        """The refusal of the opcode being checked, saying *why*."""
        # Where the opcode starts, counted from the pickle's start.
        where = self.opcode - self.start
        return PickleRefused(f"not a queue entry: the pickle {why} (at byte {where})")

    def new(self, kind: int, weight: int = 1, value: Any = None) -> Node:
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise self.refuse(f"makes more than {MAX_OBJECTS:,} objects")
        return Node(kind, weight, value)

    def push(self, kind: int, weight: int = 1, value: Any = None) -> Node:
        node = self.new(kind, weight, value)
        self.stack.append(node)
        return node

    def scalar(self, kind: int, weight: int, value: Any = None) -> None:
        """Push a new scalar."""
        self.objects += 1
        if self.objects > MAX_OBJECTS:
            raise self.refuse(f"makes more than {MAX_OBJECTS:,} objects")
        self.stack.append(Scalar(kind, weight, value))

    def pop(self) -> Sketch:
        if len(self.stack) <= self.fence:
            raise self.refuse("takes from an empty stack")
        return self.stack.pop()

    def pop_items(self, count: int) -> list[Sketch]:
        if len(self.stack) - count < self.fence:
            raise self.refuse("takes from an empty stack")
        items = self.stack[-count:]
        del self.stack[-count:]
        return items

    def top(self) -> Sketch:
        if len(self.stack) <= self.fence:
            raise self.refuse("looks at an empty stack")
        return self.stack[-1]

    def pop_mark(self) -> list[Sketch]:
        if not self.marks:
            raise self.refuse("has no mark to go back to")
        mark = self.marks.pop()
        self.fence = self.marks[-1] if self.marks else 0
        items = self.stack[mark:]
        del self.stack[mark:]
        return items

    def contain(self, container: Node, items: Sequence[Sketch]) -> None:
        """Account for *items* going into *container*: weight, depth, globals."""
        weight = container.weight
        depth = container.depth
        odd = 0
        for item in items:
            kind = item.kind
            if kind == GLOBAL or item.holds_global:
                raise self.refuse("holds a class or function as a value")
            weight += item.weight
            if item.depth >= depth:
                depth = item.depth + 1
            if kind != STR and kind != BYTES:
                odd += 1
        if weight > self.max_weight:
            raise self.refuse(
                f"would expand to more than {self.max_weight:,} (its weight limit)"
            )
        if depth > MAX_DEPTH:
            raise self.refuse(f"nests more than {MAX_DEPTH} levels deep")
        container.weight = weight
        container.depth = depth
        if container.kind == LIST:
            # For a set made from the list: how many items hash unsalted.
            container.odd += odd

    def keys(self, container: Node, keys: Sequence[Sketch]) -> None:
        """Account for *keys* becoming keys of a dict or members of a set."""
        for key in keys:
            kind = key.kind
            if kind in (STR, BYTES):
                continue
            if not hashable(key):
                raise self.refuse(f"uses a {KIND_NAMES[kind]} as a key")
            container.odd += 1
        if container.odd > MAX_ODD_KEYS:
            raise self.refuse(
                f"has more than {MAX_ODD_KEYS:,} keys that are not strings"
            )

    def mutable(self, node: Sketch, kind: int, what: str) -> Node:
        # No Scalar is ever a list, dict or set: the isinstance() only tells
        # the type checker so.
        if node.kind != kind or isinstance(node, Scalar):
            raise self.refuse(f"{what} a {KIND_NAMES[node.kind]}")
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

    def text_of(self, node: Sketch) -> str:
        if node.kind != STR or node.value is None:
            raise self.refuse("names a global with something that is not a name")
        start, end = node.value
        return self.data[start:end].decode("utf-8", "surrogatepass")
