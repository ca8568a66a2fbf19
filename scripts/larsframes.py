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
