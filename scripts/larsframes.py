"""Lars frames and protobuf varint fields by hand, for the flood and benchmark scripts (no protobuf package)."""
import struct


def varint(v):
    out = bytearray()
    v &= (1 << 64) - 1
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field(number, value):
    """A varint field (wire type 0); zero is the default and is not written."""
    return b"" if value == 0 else varint(number << 3) + varint(value)


def frame(message_id, body):
    """The 8-byte Lars header (id, length, little-endian int32) and the body."""
    return struct.pack("<ii", message_id, len(body)) + body


def fields(body):
    """The fields of a protobuf message: {number: value}, varints as ints and length-delimited fields as bytes
    (the last one of a number wins; other wire types end the parse)."""
    out, i = {}, 0
    while i < len(body):
        key, i = _read_varint(body, i)
        number, kind = key >> 3, key & 7
        if kind == 0:
            out[number], i = _read_varint(body, i)
        elif kind == 2:
            length, i = _read_varint(body, i)
            out[number], i = body[i:i + length], i + length
        else:
            break
    return out


def _read_varint(data, i):
    value, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i
