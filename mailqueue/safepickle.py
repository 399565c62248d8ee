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
- at most :data:`~mailqueue.pickle_rules.MAX_DEPTH` levels of nesting and
  :data:`~mailqueue.pickle_rules.MAX_OBJECTS` objects; a *weight* (one for
  each object, plus the length of each string, counting a shared object as
  often as it is referred to, which is what ``str()``, ``repr()`` or
  hashing would walk) of at most twice the size of the pickle, or
  :data:`~mailqueue.pickle_rules.MIN_WEIGHT`;
- at most :data:`~mailqueue.pickle_rules.MAX_ODD_KEYS` keys that are not
  strings in one dict or set (the hashes of strings are salted; those of
  numbers can be made to collide, which makes building the dict quadratic);
- calls only to allowed callables with arguments of the kinds they need:
  no number for ``bytes`` or ``bytearray``, nothing but scalars for the
  ``datetime`` types and the email defects, no arguments at all when a
  message class is instantiated;
- ``BUILD`` only on an object this same pickle made by instantiating a
  message class or a defect, once, before anything else refers to it, with
  a dict of string keys: never on a class, a function or a shared object,
  and never on an email policy (a policy is always ``compat32`` as it is);
- a class or function only where it is called, never as a value.

The limits and :exc:`PickleRefused` are defined in
:mod:`mailqueue.pickle_rules`, with the names a pickle may use, and are
importable from here too.  How the checker walks the opcodes is in
:mod:`mailqueue.pickle_checker`.
"""

from __future__ import annotations

import email.message
import io
import pickle
from typing import Any

from mailqueue.pickle_checker import Checker
from mailqueue.pickle_rules import (
    ALLOWED,
    MAX_DEPTH,
    MAX_OBJECTS,
    MESSAGE_CLASSES,
    MIN_WEIGHT,
    POLICY,
    PickleRefused,
    refused_global,
)
from mailqueue.pickle_sketch import DICT, INSTANCE, STR

# The refusal is defined with the allowed names and the limits (in
# mailqueue.pickle_rules), and is part of this module's API too.
__all__ = [
    "PickleRefused",
    "SafeUnpickler",
    "check",
    "is_plain",
    "load",
]


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds nothing but the allowed classes and plain data.

    Use it only on a stream :func:`check` accepted: by itself it does not
    bound what the allowed classes are asked to do.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[module, name]
        except KeyError:
            raise PickleRefused(refused_global(module, name)) from None

    def persistent_load(self, pid: Any) -> Any:
        raise PickleRefused("refused a persistent id: queue files are self-contained")


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
    of at least :data:`~mailqueue.pickle_rules.LONG_STRING` bytes is
    appended to it, in order.
    """
    max_weight = max(2 * (len(data) - position), MIN_WEIGHT)
    result, end = Checker(data, position, max_weight, long_strings).run()
    if result.kind == INSTANCE and issubclass(result.value, email.message.Message):
        made = "message"
    elif result.kind == STR:
        made = "text"
    elif result.kind == DICT and not result.odd:
        made = "dict"
    else:
        made = "other"
    return made, end


# Objects known to pickle into what check() accepts ---------------------------

_PLAIN_MESSAGES = frozenset(MESSAGE_CLASSES)
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
        if type(policy) is not POLICY or policy.__dict__:
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
