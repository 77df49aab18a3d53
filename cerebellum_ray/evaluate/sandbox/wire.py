"""The judge's wire format: one value as tag-length-value bytes, a message as a 4-byte length and one value.

Used on both sides of a judged run: the judge decodes every byte from the program with :func:`decode` (strict: it
builds builtin values and :class:`Opaque` only, so no object of the program's choosing, no code and no ``__eq__``
ever reaches the test); the program's side encodes its answers with :func:`encode` (there it is only a convenience
for honest programs: a program can bypass it and write any bytes). It imports nothing (json would cost ~30 ms per
sandboxed process under ``python -I -S``, more than all of HumanEval's protocol traffic) and runs where nothing of
this project is importable (loaded from its source text there).

  value :=  'N' None | 'T' True | 'F' False
          | 'i' u32 n, n bytes signed big-endian       int of any size (no 4300-digit str limit involved)
          | 'f' u8 n, float.hex() in ascii             float, exact: inf, -inf, nan, -0.0 included
          | 'c' f-payload f-payload                    complex (real, imag)
          | 's' u32 n, UTF-8 (surrogatepass)           str
          | 'b' / 'B' u32 n, bytes                     bytes / bytearray
          | 'l' / 't' / 'S' / 'Z' / 'g' u32 n, values  list / tuple / set / frozenset / iterator (generators, map,
                                                       zip... materialised; decoded as a list iterator)
          | 'd' u32 n, n (key, value) pairs            dict (any hashable keys, order kept)
          | 'r' i i i                                  range(start, stop, step)
          | 'q' i i  Fraction  | 'D' s  Decimal        (their modules imported only when one arrives)
          | 'o' s s                                    opaque: (type name, repr) of anything else
  message := u32 length, one value
"""

MAX_DEPTH = 200           # nesting, both ways
MAX_ITERATOR_ITEMS = 1 << 20

__all__ = ["MAX_DEPTH", "Opaque", "WireError", "decode", "encode", "frame"]


class WireError(Exception):
    """Bytes that are no value of this format, or a value that cannot be written in it."""


class Opaque:
    """What an unencodable value becomes on the judge's side: equal to nothing but itself (like an honest custom
    object compared with a test's literal), hashable by identity, shown by its type name and repr."""

    __slots__ = ("type_name", "text")

    def __init__(self, type_name, text):
        self.type_name, self.text = type_name, text

    def __repr__(self):
        return f"<opaque {self.type_name}: {self.text}>"

    __str__ = __repr__

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    __hash__ = object.__hash__


def _u32(n):
    if n >= 1 << 32:
        raise WireError(f"{n} items or bytes do not fit a message")
    return n.to_bytes(4, "big")


def _int_payload(x):
    return x.to_bytes((x.bit_length() + 8) // 8 or 1, "big", signed=True)


def _float_payload(x):
    text = float(x).hex().encode()
    return bytes((len(text),)) + text


def _is(x, t, strict, exact):
    """x is of type t: exactly (strict), or as an instance of a subclass too (the program's side)."""
    return exact is t or (not strict and isinstance(x, t))


def encode(x, out=None, depth=0, strict=False):
    """Value -> bytes. strict=True (the judge's side): builtin types only, TypeError for anything else (a function
    argument, say). strict=False (the program's side): subclasses travel as their base type, iterators are
    materialised, anything else becomes opaque."""
    top = out is None
    if top:
        out = bytearray()
    if depth > MAX_DEPTH:
        raise WireError(f"nested deeper than {MAX_DEPTH}")
    t = type(x)
    if x is None:
        out += b"N"
    elif x is True:
        out += b"T"
    elif x is False:
        out += b"F"
    elif _is(x, int, strict, t):
        p = _int_payload(int(x))
        out += b"i" + _u32(len(p)) + p
    elif _is(x, float, strict, t):
        out += b"f" + _float_payload(x)
    elif _is(x, str, strict, t):
        p = str(x).encode("utf-8", "surrogatepass")
        out += b"s" + _u32(len(p)) + p
    elif _is(x, list, strict, t) or _is(x, tuple, strict, t):
        out += (b"l" if isinstance(x, list) else b"t") + _u32(len(x))
        for v in x:
            encode(v, out, depth + 1, strict)
    elif _is(x, dict, strict, t):
        out += b"d" + _u32(len(x))
        for k, v in x.items():
            encode(k, out, depth + 1, strict)
            encode(v, out, depth + 1, strict)
    elif _is(x, frozenset, strict, t) or _is(x, set, strict, t):
        out += (b"Z" if isinstance(x, frozenset) else b"S") + _u32(len(x))
        for v in x:
            encode(v, out, depth + 1, strict)
    elif _is(x, bytearray, strict, t) or _is(x, bytes, strict, t):
        out += (b"B" if isinstance(x, bytearray) else b"b") + _u32(len(x)) + bytes(x)
    elif _is(x, complex, strict, t):
        out += b"c" + _float_payload(x.real) + _float_payload(x.imag)
    elif t is range:
        out += b"r"
        for v in (x.start, x.stop, x.step):
            encode(v, out, depth + 1, strict)
    elif t.__module__ == "fractions" and t.__name__ == "Fraction":
        out += b"q"
        encode(x.numerator, out, depth + 1, strict)
        encode(x.denominator, out, depth + 1, strict)
    elif t.__module__ == "decimal" and t.__name__ == "Decimal":
        out += b"D"
        encode(str(x), out, depth + 1, strict)
    elif strict:
        raise TypeError(f"a {t.__name__} cannot be sent to the program (only builtin values travel)")
    elif hasattr(t, "__next__") and hasattr(t, "__iter__"):
        _encode_iterator(x, out, depth)
    else:
        _encode_opaque(x, out, depth)
    return bytes(out) if top else out


def _encode_iterator(x, out, depth):
    items = []
    for v in x:
        if len(items) >= MAX_ITERATOR_ITEMS:
            raise WireError(f"iterator longer than {MAX_ITERATOR_ITEMS} items")
        items.append(v)
    out += b"g" + _u32(len(items))
    for v in items:
        encode(v, out, depth + 1)


def _encode_opaque(x, out, depth):
    try:
        text = repr(x)[:200]
    except BaseException:
        text = "?"
    out += b"o"
    encode(type(x).__name__[:100], out, depth + 1)
    encode(text, out, depth + 1)


def frame(payload):
    """One message: 4-byte big-endian length, then the encoded value."""
    return _u32(len(payload)) + payload


# ---- decoding (the judge's side: every byte from the program goes through here) ----------------------------------

_DECODE_ERRORS = (ValueError, TypeError, OverflowError, MemoryError, RecursionError, ArithmeticError)


def decode(data):
    """bytes -> value, strictly: builtin values and Opaque only; WireError for anything malformed (short data,
    trailing bytes, unknown tag, counts larger than the data, nesting > MAX_DEPTH, unhashable keys, bad UTF-8,
    bad float text)."""
    try:
        value, pos = _decode(data, 0, 0)
    except WireError:
        raise
    except _DECODE_ERRORS as e:
        raise WireError(f"{type(e).__name__}: {str(e)[:200]}") from None
    if pos != len(data):
        raise WireError(f"{len(data) - pos} trailing bytes")
    return value


def _take(data, pos, n):
    end = pos + n
    if end > len(data):
        raise WireError("message ends inside a value")
    return data[pos:end], end


def _count(data, pos):
    raw, pos = _take(data, pos, 4)
    n = int.from_bytes(raw, "big")
    if n > len(data) - pos:  # every element takes at least one byte: no allocation beyond the message
        raise WireError("count larger than the message")
    return n, pos


def _float(data, pos):
    raw, pos = _take(data, pos, 1)
    text, pos = _take(data, pos, raw[0])
    return float.fromhex(text.decode("ascii")), pos


def _sized(data, pos):
    n, pos = _count(data, pos)
    return _take(data, pos, n)


def _items(data, pos, depth, n):
    items = []
    for _ in range(n):
        v, pos = _decode(data, pos, depth + 1)
        items.append(v)
    return items, pos


_SCALARS = {b"N": None, b"T": True, b"F": False}
_SEQUENCES = {b"l": list, b"t": tuple, b"S": set, b"Z": frozenset, b"g": lambda items: iter(items)}


def _decode(data, pos, depth):
    if depth > MAX_DEPTH:
        raise WireError(f"nested deeper than {MAX_DEPTH}")
    tag, pos = _take(data, pos, 1)
    if tag in _SCALARS:
        return _SCALARS[tag], pos
    if tag == b"i":
        raw, pos = _sized(data, pos)
        return int.from_bytes(raw, "big", signed=True), pos
    if tag == b"f":
        return _float(data, pos)
    if tag == b"c":
        real, pos = _float(data, pos)
        imag, pos = _float(data, pos)
        return complex(real, imag), pos
    if tag == b"s":
        raw, pos = _sized(data, pos)
        return raw.decode("utf-8", "surrogatepass"), pos
    if tag in (b"b", b"B"):
        raw, pos = _sized(data, pos)
        return (bytes(raw) if tag == b"b" else bytearray(raw)), pos
    if tag in _SEQUENCES:
        n, pos = _count(data, pos)
        items, pos = _items(data, pos, depth, n)
        return _SEQUENCES[tag](items), pos
    if tag == b"d":
        n, pos = _count(data, pos)
        d = {}
        for _ in range(n):
            k, pos = _decode(data, pos, depth + 1)
            v, pos = _decode(data, pos, depth + 1)
            d[k] = v
        return d, pos
    return _decode_rare(tag, data, pos, depth)


def _decode_rare(tag, data, pos, depth):
    if tag == b"r":
        parts, pos = _items(data, pos, depth, 3)
        if any(type(v) is not int for v in parts):
            raise WireError("range needs ints")
        return range(*parts), pos
    if tag == b"q":
        (num, den), pos = _items(data, pos, depth, 2)
        if type(num) is not int or type(den) is not int:
            raise WireError("Fraction needs ints")
        import fractions
        return fractions.Fraction(num, den), pos
    if tag == b"D":
        (text,), pos = _items(data, pos, depth, 1)
        if type(text) is not str or len(text) > 1000:
            raise WireError("Decimal needs a short str")
        import decimal
        return decimal.Decimal(text), pos
    if tag == b"o":
        (name, text), pos = _items(data, pos, depth, 2)
        if type(name) is not str or type(text) is not str:
            raise WireError("opaque needs two str")
        return Opaque(name[:100], text[:200]), pos
    raise WireError(f"unknown tag {tag!r}")
