#!/usr/bin/python3
"""Unusual but valid image files, and the pixels a trainer built on PIL sees in them.

Writes tests/ref/data/images/*.{png,jpg,...} and tests/ref/data/images.safetensors, read by
tests/test_data.c (each file decoded by ldmc against its reference) and tests/test_train.c (two
identical runs on them give identical checkpoints). Every picture is a small pattern whose four
corners differ, so that a wrong orientation shows. The files are made by PIL where PIL writes
them, by TurboJPEG (through ctypes) for YCCK, and by the PNG writer below for what PIL cannot
write (16-bit RGB and RGBA, Adam7 interlacing, a gAMA chunk).

The reference of each file is its displayed picture as 8-bit RGB (int32, (H, W, 3)):
- PIL's decode, then ImageOps.exif_transpose (EXIF orientation, JPEG and PNG eXIf), then alpha
  (an alpha channel or a palette's tRNS) composited onto white with Image.alpha_composite;
- CMYK and YCCK JPEGs: PIL's convert("RGB") (Adobe files store inverted inks);
- 16-bit PNGs: round(v / 257) of the stored samples (the PNG specification's scaling), composited
  onto white after scaling, because PIL does not read 16-bit RGB and clips 16-bit gray;
- PNGs are taken as sRGB whatever their gAMA chunk says, as PIL does.

Run with Debian's Python: /usr/bin/python3 tests/ref/make_image_refs.py (needs python3-pil and
libturbojpeg0).
"""
import ctypes
import io
import os
import shutil
import struct
import sys
import zlib

import numpy as np
from PIL import Image, ImageOps

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from safetensors_writer import save_file  # noqa: E402

OUT = os.path.join(HERE, "data", "images")
W, H = 12, 8  # wider than tall: a quarter turn shows in the size


def pattern(w=W, h=H):
    """(h, w, 3) uint8: red grows to the right, green downwards, blue marks the top-left corner."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    b = np.where((x < 3) & (y < 3), 255, 40).astype(np.uint8)
    return np.stack([r, g, b], axis=-1)


def alpha_ramp(w=W, h=H):
    """(h, w) uint8 alpha: 0 in the first column, 255 in the last, a ramp between."""
    x = np.mgrid[0:h, 0:w][1]
    return (x * 255 // (w - 1)).astype(np.uint8)


def on_white(image):
    """PIL's view of a picture with alpha: composited onto white."""
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)


def pil_reference(path):
    image = ImageOps.exif_transpose(Image.open(path))
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    image = on_white(image) if has_alpha else image
    return np.asarray(image.convert("RGB"))


# ---- a PNG writer for what PIL cannot write


def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def write_png(path, samples, color_type, interlace=False, gamma=None):
    """samples: (h, w, c) uint8 or uint16 (big-endian on disk); every row with filter 0."""
    h, w = samples.shape[:2]
    depth = 16 if samples.dtype == np.uint16 else 8
    data = samples.astype(">u2" if depth == 16 else np.uint8)
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = data[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in sub:
            raw += b"\0" + row.tobytes()
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type,
                                                           0, 0, 1 if interlace else 0))
    if gamma is not None:
        png += chunk(b"gAMA", struct.pack(">I", int(gamma * 100000)))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def scaled16(v):
    return (v.astype(np.int64) * 2 + 257) // (2 * 257)  # round(v / 257), ties up


def composite16(rgba16):
    rgb, a = scaled16(rgba16[..., :3]), scaled16(rgba16[..., 3:])
    return (rgb * a + 255 * (255 - a) + 127) // 255


# ---- YCCK through TurboJPEG (PIL writes CMYK JPEGs only)


def write_ycck(path, cmyk):
    tj = ctypes.CDLL("libturbojpeg.so.0")
    tj.tjInitCompress.restype = ctypes.c_void_p
    handle = ctypes.c_void_p(tj.tjInitCompress())
    buf, size = ctypes.POINTER(ctypes.c_ubyte)(), ctypes.c_ulong(0)
    h, w = cmyk.shape[:2]
    src = np.ascontiguousarray(cmyk, dtype=np.uint8)
    TJPF_CMYK, TJSAMP_444 = 11, 0
    rc = tj.tjCompress2(handle, src.ctypes.data_as(ctypes.c_void_p), w, 0, h, TJPF_CMYK,
                        ctypes.byref(buf), ctypes.byref(size), TJSAMP_444, 95, 0)
    assert rc == 0, "tjCompress2 failed"
    data = ctypes.string_at(buf, size.value)
    tj.tjFree(buf)
    tj.tjDestroy(handle)
    assert b"Adobe" in data[:200], "TurboJPEG writes an Adobe segment for YCCK"
    with open(path, "wb") as f:
        f.write(data)


def exif_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    refs = {}
    rgb = pattern()
    a = alpha_ramp()

    def add(name, reference=None):
        path = os.path.join(OUT, name)
        refs[name] = reference if reference is not None else pil_reference(path)

    # PNG: alpha, gray + alpha, palettes (with and without tRNS), gray, 1-bit
    rgba = np.dstack([rgb, a])
    rgba[:, 0] = (0, 0, 0, 0)  # transparent black: must come out white
    Image.fromarray(rgba, "RGBA").save(os.path.join(OUT, "rgba.png"))
    add("rgba.png")
    Image.fromarray(np.dstack([rgb[..., 0], a]), "LA").save(os.path.join(OUT, "gray_alpha.png"))
    add("gray_alpha.png")
    palette = Image.fromarray(rgb).quantize(16)
    palette.save(os.path.join(OUT, "palette.png"))
    add("palette.png")
    palette.info["transparency"] = bytes([0, 128] + [255] * 14)
    palette.save(os.path.join(OUT, "palette_trns.PNG"), transparency=palette.info["transparency"])
    add("palette_trns.PNG")
    Image.fromarray(rgb[..., 1]).save(os.path.join(OUT, "gray.png"))
    add("gray.png")
    Image.fromarray(rgb[..., 0] > 127).save(os.path.join(OUT, "bilevel.png"))
    add("bilevel.png")
    # PNG, by hand: 16-bit RGB (a mid-grey block of 0x8080 = 128 in 8 bits), 16-bit gray,
    # 16-bit RGBA, Adam7-interlaced, and 8-bit with a gAMA of 1.0 (still read as sRGB)
    rgb16 = np.minimum(rgb.astype(np.int64) * 257 + np.arange(W)[None, :, None] * 11, 65535)
    rgb16 = rgb16.astype(np.uint16)
    rgb16[4:, 6:] = 0x8080
    write_png(os.path.join(OUT, "rgb16.png"), rgb16, 2)
    add("rgb16.png", scaled16(rgb16))
    gray16 = rgb16[..., 1:2]
    write_png(os.path.join(OUT, "gray16.png"), gray16, 0)
    add("gray16.png", np.repeat(scaled16(gray16), 3, axis=2))
    rgba16 = np.dstack([rgb16, a.astype(np.uint16) * 257])
    write_png(os.path.join(OUT, "rgba16.png"), rgba16, 6)
    add("rgba16.png", composite16(rgba16))
    big = pattern(21, 13)  # odd sizes leave some Adam7 passes short or empty
    write_png(os.path.join(OUT, "interlaced.png"), big, 2, interlace=True)
    add("interlaced.png", big)
    write_png(os.path.join(OUT, "gamma1.png"), rgb, 2, gamma=1.0)
    add("gamma1.png", rgb)
    # PNG with an eXIf orientation
    Image.fromarray(rgb).save(os.path.join(OUT, "exif6.png"), exif=exif_bytes(6))
    add("exif6.png")
    # JPEG: progressive, gray, CMYK (PIL: Adobe, inverted), YCCK (TurboJPEG), every orientation
    Image.fromarray(rgb).save(os.path.join(OUT, "progressive.jpg"), quality=92, progressive=True)
    add("progressive.jpg")
    Image.fromarray(rgb[..., 1]).save(os.path.join(OUT, "gray.jpg"), quality=92)
    add("gray.jpg")
    cmyk = np.dstack([255 - rgb, np.full((H, W, 1), 30, np.uint8)])
    cmyk[:, :4, 3] = 200  # some black ink
    Image.fromarray(cmyk, "CMYK").save(os.path.join(OUT, "cmyk.jpg"), quality=95)
    add("cmyk.jpg")
    write_ycck(os.path.join(OUT, "ycck.jpeg"), 255 - cmyk)  # inverted, as Adobe files store it
    add("ycck.jpeg")
    for o in range(1, 9):
        name = "exif%d.%s" % (o, ["jpg", "JPG", "jpeg", "JPEG"][o % 4])
        Image.fromarray(rgb).save(os.path.join(OUT, name), quality=92, exif=exif_bytes(o))
        add(name)
    # extreme sizes: 1x1, 1:4, 4:1
    Image.fromarray(np.array([[[200, 30, 90]]], np.uint8)).save(os.path.join(OUT, "one.png"))
    add("one.png")
    Image.fromarray(pattern(8, 32)).save(os.path.join(OUT, "tall.jpg"), quality=92)
    add("tall.jpg")
    Image.fromarray(pattern(32, 8)).save(os.path.join(OUT, "WIDE.PNG"))
    add("WIDE.PNG")

    tensors = {name: np.ascontiguousarray(ref, dtype=np.int32) for name, ref in refs.items()}
    for name, ref in tensors.items():
        assert ref.ndim == 3 and ref.shape[2] == 3, name
    save_file(tensors, os.path.join(HERE, "data", "images.safetensors"),
              {"made_by": "tests/ref/make_image_refs.py", "pillow": Image.__version__})
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print("%d files (%d bytes) in %s" % (len(refs), total, OUT))


if __name__ == "__main__":
    main()
