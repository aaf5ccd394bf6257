"""Writes the hand-made .npy seeds of fuzz/corpus/npy/ into the current directory: one small array
per dtype, a scalar, an empty array, format versions 2.0 and 3.0, and the refused variants
(Fortran order, big-endian). Standard library only, so it runs without numpy."""
import struct


def npy(name, descr, shape, data, version=1, fortran=False):
    sh = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    header = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, "True" if fortran else "False", sh)
    pre = 10 if version == 1 else 12
    header += " " * ((64 - (pre + len(header) + 1) % 64) % 64) + "\n"
    out = b"\x93NUMPY" + bytes([version, 0])
    out += struct.pack("<H" if version == 1 else "<I", len(header)) + header.encode("latin1") + data
    with open(name, "wb") as f:
        f.write(out)


npy("f32_2x3.npy", "<f4", (2, 3), struct.pack("<6f", 1, -2, 3.5, 0, float("inf"), float("nan")))
npy("f64_scalar.npy", "<f8", (), struct.pack("<d", 3.25))
npy("f16_4.npy", "<f2", (4,), struct.pack("<4H", 0x3c00, 0x8000, 0x7c00, 0x0001))
npy("i8_3.npy", "|i1", (3,), bytes([0xff, 0x00, 0x7f]))
npy("u8_2x2.npy", "|u1", (2, 2), bytes([1, 2, 3, 255]))
npy("i16_2.npy", "<i2", (2,), struct.pack("<2h", -32768, 7))
npy("u16_2.npy", "<u2", (2,), struct.pack("<2H", 65535, 7))
npy("i32_1x4.npy", "<i4", (1, 4), struct.pack("<4i", 0, 1, 50256, -1))
npy("u32_2.npy", "<u4", (2,), struct.pack("<2I", 4294967295, 1))
npy("i64_2x2.npy", "<i8", (2, 2), struct.pack("<4q", 1, 2, -3, 9223372036854775807))
npy("u64_1.npy", "<u8", (1,), struct.pack("<Q", 18446744073709551615))
npy("bool_3.npy", "|b1", (3,), bytes([0, 1, 1]))
npy("empty_0x5.npy", "<f4", (0, 5), b"")
npy("v2_i64_3.npy", "<i8", (3,), struct.pack("<3q", 5, 6, 7), version=2)
npy("v3_f32_2.npy", "<f4", (2,), struct.pack("<2f", 1, 2), version=3)
npy("fortran_f32_2x2.npy", "<f4", (2, 2), struct.pack("<4f", 1, 2, 3, 4), fortran=True)
npy("bigendian_i4_2.npy", ">i4", (2,), struct.pack(">2i", 1, 2))
