"""The pickle checker: each opcode's effect on the sketch, checked against the rules.

:func:`mailqueue.safepickle.check` runs a :class:`Checker` over a pickle.
It builds nothing: each opcode changes the sketch of the stack and the memo
(:mod:`mailqueue.pickle_sketch`) as the unpickler would change the real
ones, and is refused when it breaks a rule of :mod:`mailqueue.safepickle`
(the limits and allowed names are in :mod:`mailqueue.pickle_rules`).
:meth:`Checker.run` checks the opcodes that make up most of a message's
pickle itself; every other opcode has a handler in :data:`HANDLERS`.
"""

from __future__ import annotations

import pickle
import pickletools
from collections.abc import Callable, Sequence
from typing import Any

from mailqueue.pickle_rules import (
    ALLOWED,
    DECODE_BYTES,
    DEFECTS,
    LONG_STRING,
    MAILMAN_UTC,
    MAX_DEPTH,
    MAX_OBJECTS,
    MAX_ODD_KEYS,
    MESSAGE_CLASSES,
    POLICY,
    RECONSTRUCTOR,
    VALUES,
    PickleRefused,
    refused_global,
)
from mailqueue.pickle_sketch import (
    BYTEARRAY,
    BYTES,
    DICT,
    FLOAT,
    FROZENSET,
    GLOBAL,
    INSTANCE,
    INT,
    KIND_NAMES,
    LIST,
    MUTABLE,
    NONE,
    NONE_SCALAR,
    SCALARS,
    SET,
    STR,
    TUPLE,
    VALUE,
    Node,
    Scalar,
    Sketch,
    Walk,
    describe,
    hashable,
)

__all__ = ["HANDLERS", "Checker"]


class Checker(Walk):
    """Walk one pickle's opcodes, keeping a sketch of the stack and the memo."""

    __slots__ = ()

    # The walk ---------------------------------------------------------------

    def run(self) -> tuple[Sketch, int]:
        """Check up to and including STOP; return the result and where it ends.

        The opcodes that make up most of a message's pickle are checked here,
        without a call: MEMOIZE and MARK only here; SHORT_BINUNICODE, TUPLE2,
        NONE and the empty containers as their handlers would, when they can.
        An object made here is memoized at once if MEMOIZE follows.

        A TUPLE2 of two scalars (a header's name and value) has nothing to
        look into, and is never over the weight limit.  A scalar weighs no
        more than the bytes that wrote it, so two different ones weigh less
        than the pickle; the same one twice was fetched from the memo at
        least once (DUP is refused), by a GET of two bytes or more, and
        weighs less than twice the pickle.
        """
        data, end, handlers = self.data, len(self.data), HANDLERS
        stack, memo, marks = self.stack, self.memo, self.marks
        # Kept here, and in self for the handlers only around their calls.
        position, objects, fence = self.position, self.objects, self.fence
        while position < end:
            code = data[position]
            if code == 0x94:  # MEMOIZE
                if len(stack) <= fence:
                    raise self.refuse_at(position, "looks at an empty stack")
                memo.append(stack[-1])
                position += 1
                continue
            node: Sketch | None = None
            if objects >= MAX_OBJECTS:
                pass  # its handler refuses it, if it makes an object
            elif code == 0x8C and position + 1 < end:  # SHORT_BINUNICODE
                start = position + 2
                stop = start + data[position + 1]
                if stop > end:
                    raise self.refuse_at(
                        position, f"is truncated (wants {stop - end:,} more bytes)"
                    )
                node = Scalar(STR, stop - start + 1, (start, stop))
                position = stop - 1
            elif code == 0x86 and len(stack) - 2 >= fence:  # TUPLE2
                first, second = stack[-2], stack[-1]
                if type(first) is Scalar and type(second) is Scalar:
                    weight = 1 + first.weight + second.weight
                    odd = (first.kind != STR and first.kind != BYTES) + (
                        second.kind != STR and second.kind != BYTES
                    )
                    node = Node(TUPLE, weight, [first, second], 1, odd)
                    del stack[-2:]
            elif code == 0x4E:  # NONE
                node = NONE_SCALAR
            elif code == 0x29:  # EMPTY_TUPLE
                node = Node(TUPLE, 1, [])
            elif code == 0x5D:  # EMPTY_LIST
                node = Node(LIST)
            elif code == 0x7D:  # EMPTY_DICT
                node = Node(DICT)
            if node is not None:
                stack.append(node)
                objects += 1
                position += 1
                if position < end and data[position] == 0x94:  # MEMOIZE
                    memo.append(node)
                    position += 1
            elif code == 0x28:  # MARK
                if len(marks) >= MAX_DEPTH:
                    raise self.refuse_at(position, f"nests more than {MAX_DEPTH} marks")
                fence = len(stack)
                marks.append(fence)
                position += 1
            elif code == 0x2E:  # STOP
                self.objects = objects
                return self.stop(position)
            else:
                self.opcode, self.position = position, position + 1
                self.objects, self.fence = objects, fence
                handlers[code](self)
                position, objects, fence = self.position, self.objects, self.fence
        raise self.refuse_at(position, "is truncated (no STOP)")

    def refuse_at(self, position: int, why: str) -> PickleRefused:
        """The refusal of the opcode at *position*, saying *why*."""
        self.opcode = position
        return self.refuse(why)

    def stop(self, position: int) -> tuple[Sketch, int]:
        """STOP at *position*: the one object made, and where the pickle ends."""
        if self.marks or len(self.stack) != 1:
            raise self.refuse_at(position, "stops with other than one object")
        return self.stack[0], position + 1

    def op_unused(self) -> None:
        code = self.data[self.opcode]
        for opcode in _OPCODES_BY_CODE.get(code, ()):
            raise self.refuse(
                f"uses the {opcode.name} opcode, which queue files never need"
            )
        raise self.refuse(f"is not a pickle (byte {code:#04x} is not an opcode)")

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
            and kind in (STR, BYTES)
        ):
            self.long_strings.append((start, size))
        if kind in MUTABLE:
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
        self.scalar(INT, 1 + len(self.line()))

    def op_float(self) -> None:
        self.scalar(FLOAT, 1 + len(self.line()))

    def op_text_line(self) -> None:
        # STRING and UNICODE: a quoted or escaped line; never a global's name.
        self.scalar(STR, 1 + len(self.line()))

    # Containers ------------------------------------------------------------

    def op_tuple_of(self, count: int) -> None:
        self.make_tuple(self.pop_items(count))

    def op_tuple(self) -> None:
        self.make_tuple(self.pop_mark())

    def make_tuple(self, items: list[Sketch]) -> None:
        node = self.new(TUPLE)
        # A short tuple remembers its items: it may be the arguments of a
        # call, and only a call may take a class or function.
        node.value = items if len(items) <= 4 else None
        values = [
            item for item in items if item.kind != GLOBAL and not item.holds_global
        ]
        if len(values) != len(items):
            node.holds_global = True
        self.contain(node, values)
        node.odd = sum(item.kind != STR and item.kind != BYTES for item in values)
        node.hashable = all(map(hashable, values))
        self.stack.append(node)

    def op_list(self) -> None:
        node = self.new(LIST)
        self.contain(node, self.pop_mark())
        self.stack.append(node)

    def op_dict(self) -> None:
        node = self.new(DICT)
        self.set_items(node, self.pop_mark())
        self.stack.append(node)

    def op_frozenset(self) -> None:
        node = self.new(FROZENSET)
        items = self.pop_mark()
        self.keys(node, items)
        self.contain(node, items)
        self.stack.append(node)

    def op_append(self) -> None:
        item = self.pop()
        target = self.mutable(self.top(), LIST, "appends to")
        self.contain(target, [item])

    def op_appends(self) -> None:
        items = self.pop_mark()
        target = self.mutable(self.top(), LIST, "appends to")
        self.contain(target, items)

    def op_setitem(self) -> None:
        value = self.pop()
        key = self.pop()
        target = self.mutable(self.top(), DICT, "sets an item of")
        self.set_items(target, [key, value])

    def op_setitems(self) -> None:
        items = self.pop_mark()
        target = self.mutable(self.top(), DICT, "sets an item of")
        self.set_items(target, items)

    def set_items(self, target: Node, items: Sequence[Sketch]) -> None:
        if len(items) % 2:
            raise self.refuse("gives a dict a key without a value")
        # keys() for the keys, then contain() for all: the common case
        # (string keys) in one pass.
        odd_keys = [key for key in items[::2] if key.kind != STR]
        if odd_keys:
            self.keys(target, odd_keys)
        self.contain(target, items)

    def op_additems(self) -> None:
        items = self.pop_mark()
        target = self.mutable(self.top(), SET, "adds to")
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
        if isinstance(node, Node) and node.kind in MUTABLE:
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
        found = ALLOWED.get((module, name))
        if found is None:
            raise PickleRefused(refused_global(module, name))
        self.push(GLOBAL, 1, found)

    def op_newobj(self) -> None:
        if len(self.stack) - 2 < self.fence:
            raise self.refuse("takes from an empty stack")
        arguments = self.stack.pop()
        cls = self.stack.pop()
        if cls.kind != GLOBAL or not (
            cls.value in MESSAGE_CLASSES or cls.value is POLICY
        ):
            raise self.refuse(f"instantiates {describe(cls)} with NEWOBJ")
        if arguments.kind != TUPLE or arguments.value != []:
            raise self.refuse("passes arguments to a message class")
        self.push(INSTANCE, 1, cls.value)

    def op_reduce(self) -> None:
        arguments = self.pop()
        function = self.pop()
        if function.kind != GLOBAL:
            raise self.refuse(f"calls {describe(function)}")
        if arguments.kind != TUPLE or arguments.value is None:
            raise self.refuse("calls with arguments that are not a short tuple")
        self.stack.append(self.call(function.value, arguments.value, arguments))

    def call(self, function: Any, arguments: list[Sketch], packed: Sketch) -> Node:
        if function is RECONSTRUCTOR:
            return self.reconstruct(arguments)
        if packed.holds_global:
            name = getattr(function, "__name__", "?")
            raise self.refuse(f"passes a class or function to {name}")
        kind = self.made_by(function, arguments)
        node = self.new(kind, 1, function if kind == INSTANCE else None)
        self.contain(node, arguments)
        if kind == SET:
            node.odd = arguments[0].odd if arguments else 0
        return node

    def reconstruct(self, arguments: list[Sketch]) -> Node:
        # _reconstructor(cls, object, None): object.__new__(cls).
        kinds = [argument.kind for argument in arguments]
        cls = arguments[0].value if kinds and kinds[0] == GLOBAL else None
        if (
            kinds != [GLOBAL, GLOBAL, NONE]
            or not (cls in MESSAGE_CLASSES or cls is POLICY)
            or arguments[1].value is not object
        ):
            raise self.refuse("rebuilds an object that is not a plain message")
        return self.new(INSTANCE, 1, cls)

    def made_by(self, function: Any, arguments: list[Sketch]) -> int:
        """The kind of object *function* makes of *arguments*, if allowed."""
        kinds = [argument.kind for argument in arguments]
        name = getattr(function, "__name__", "?")
        if function in (set, frozenset):
            if kinds and kinds != [LIST] and kinds != [TUPLE]:
                raise self.refuse(f"makes a {name} from a {KIND_NAMES[kinds[0]]}")
            if arguments and arguments[0].odd > MAX_ODD_KEYS:
                raise self.refuse(
                    f"has more than {MAX_ODD_KEYS:,} keys that are not strings"
                )
            return SET if function is set else FROZENSET
        if function in (bytes, bytearray):
            # bytes(n) and bytearray(n) allocate n bytes: never a number.
            if kinds not in ([], [BYTES], [LIST], [TUPLE], [STR, STR]):
                raise self.refuse(
                    f"calls {name} with "
                    + ", ".join(KIND_NAMES[kind] for kind in kinds)
                )
            return BYTES if function is bytes else BYTEARRAY
        if function is DECODE_BYTES:
            if kinds not in ([STR], [STR, STR]):
                raise self.refuse("decodes bytes from something that is not text")
            return BYTES
        if function is MAILMAN_UTC:
            if kinds:
                raise self.refuse("makes GNU Mailman's UTC time zone with arguments")
            return VALUE
        if function in DEFECTS or function in VALUES:
            if any(kind not in SCALARS for kind in kinds):
                raise self.refuse(f"calls {name} with more than plain values")
            return INSTANCE if function in DEFECTS else VALUE
        raise self.refuse(f"calls {name}, which is never called")

    def op_build(self) -> None:
        state = self.pop()
        target = self.top()
        # No Scalar is ever an instance: as in mutable(), the isinstance()
        # is for the type checker.
        if target.kind != INSTANCE or isinstance(target, Scalar):
            raise self.refuse(f"sets the state of {describe(target)}")
        if target.value is POLICY:
            raise self.refuse("sets the state of an email policy")
        if target.frozen:
            raise self.refuse("sets the state of an object twice or after using it")
        if state.kind != DICT or state.odd:
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


# The opcode table -----------------------------------------------------------

#: Each opcode's byte, and the opcodes of pickletools with it (for refusals).
_OPCODES_BY_CODE: dict[int, list[Any]] = {}
for _opcode in pickletools.opcodes:
    _OPCODES_BY_CODE.setdefault(ord(_opcode.code), []).append(_opcode)

_Handler = Callable[[Checker], object]


def _scalar_handlers() -> dict[bytes, _Handler]:
    def sized(kind: int, width: int) -> _Handler:
        return lambda checker: checker.op_sized(kind, width)

    def fixed(kind: int, width: int) -> _Handler:
        return lambda checker: checker.op_fixed(kind, width)

    def scalar(kind: int) -> _Handler:
        return lambda checker: checker.scalar(kind, 1)

    c = Checker
    return {
        b"F": c.op_float,
        b"G": fixed(FLOAT, 8),
        b"I": c.op_int,
        b"J": fixed(INT, 4),
        b"K": fixed(INT, 1),
        b"L": c.op_int,
        b"M": fixed(INT, 2),
        b"\x8a": sized(INT, 1),
        b"\x8b": sized(INT, 4),
        b"N": scalar(NONE),
        b"\x88": scalar(INT),
        b"\x89": scalar(INT),
        b"S": c.op_text_line,
        b"V": c.op_text_line,
        b"T": sized(STR, 4),
        b"U": sized(STR, 1),
        b"X": sized(STR, 4),
        b"\x8c": sized(STR, 1),
        b"\x8d": sized(STR, 8),
        b"B": sized(BYTES, 4),
        b"C": sized(BYTES, 1),
        b"\x8e": sized(BYTES, 8),
        b"\x96": sized(BYTEARRAY, 8),
    }


def _container_handlers() -> dict[bytes, _Handler]:
    def empty(kind: int) -> _Handler:
        return lambda checker: checker.push(kind)

    c = Checker
    return {
        b"]": empty(LIST),
        b")": lambda checker: checker.make_tuple([]),
        b"}": empty(DICT),
        b"\x8f": empty(SET),
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
    }


def _stack_and_object_handlers() -> dict[bytes, _Handler]:
    c = Checker
    return {
        b"0": c.op_pop,
        b"1": c.op_pop_mark,
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


def _handlers() -> list[_Handler]:
    table: list[_Handler] = [Checker.op_unused] * 256
    for handlers in (
        _scalar_handlers(),
        _container_handlers(),
        _stack_and_object_handlers(),
    ):
        for code, handler in handlers.items():
            table[code[0]] = handler
    return table


#: Each byte's handler, refusing the opcodes queue files never need.  MARK,
#: MEMOIZE and STOP have none: :meth:`Checker.run` checks them itself.
HANDLERS = _handlers()
