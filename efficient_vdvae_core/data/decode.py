"""Image files -> uint8 pixels: the header check, the pixel-mode rules, 16-bit scaling and the size limit.

`header_problem` needs only what `PIL.Image.open` reads lazily (format, size, mode); `decode_image`
applies the same check, then decodes. The rules:
* at least 1 x 1 and at most MAX_PIXELS pixels (width x height);
* 8-bit modes: 'L' and 'RGB' as stored; '1' -> 0 / 255; 'P' -> its palette colours; 'CMYK' -> RGB by
  (255 - C) (255 - K) / 255 (ICC profiles are not applied); 'YCbCr' -> RGB; 'RGBX' -> RGB;
* 16-bit samples -> round(v / 257), the nearest 8-bit level: 'I;16' / 'I;16B' / 'I;16L' / 'I;16N',
  16-bit RGB, RGBA and gray + alpha in PNG and uncompressed TIFF (read in full: Pillow alone keeps their
  high byte), and 'I' (32-bit integers) read as 16-bit samples: an 'I' value outside 0..65535 is
  refused, never clipped. Other 16-bit colour files (compressed TIFF, PPM) keep Pillow's 8-bit reading
  (the high byte, or Pillow's own scaling), at most one level from round(v / 257);
* transparency (an alpha band, or a PNG / GIF transparent colour) is composited over black,
  round(c * a / 255): a transparent pixel is black, an opaque one keeps its colour ('RGBa' and 'La'
  store exactly that already);
* then RGB -> L by ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B) for channels = 1, and L -> RGB by
  copying the band for channels = 3;
* refused: 'F' (32-bit floats have no defined 8-bit scale), 'LAB' and any other mode.
"""
import numpy as np
from PIL import Image

from efficient_vdvae_core.errors import UserError

MODES = {1: "L", 3: "RGB"}
MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS), about 9459 x 9459
EIGHT_BIT_MODES = {"1": "L", "L": "L", "LA": "LA", "P": "RGB", "PA": "RGBA", "RGB": "RGB", "RGBA": "RGBA",
                   "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB"}  # mode -> the mode it is read in
PREMULTIPLIED = {"La": 1, "RGBa": 3}  # mode -> colour bands, already multiplied by alpha
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# 16-bit colour samples: Pillow's rawmode (keeping the high bytes) -> (the rawmode unpacking the low bytes
# of the same data, colour bands)
WIDE_RAWMODES = {"RGB;16B": ("RGB;16L", 3), "RGB;16L": ("RGB;16B", 3), "RGBA;16B": ("RGBA;16L", 3),
                 "RGBA;16L": ("RGBA;16B", 3), "LA;16B": ("RGBA", 1)}
REFUSED_MODES = {"F": "32-bit float pixels (mode 'F') have no defined 8-bit scale; save it as 8- or 16-bit",
                 "LAB": "CIELab pixels (mode 'LAB') are not converted; save it as RGB"}


class UnreadableImageError(UserError):
    """An image file that cannot be decoded; `path` and `reason` (a short phrase) when made by `unreadable`."""

    def __init__(self, message, path=None, reason=None):
        super().__init__(message)  # one positional argument, as torch's DataLoader re-raises worker errors
        self.path = path
        self.reason = reason


def unreadable(path, reason):
    """The UnreadableImageError of the image file at `path`."""
    return UnreadableImageError(f"{path}: not a readable image ({reason}); remove or replace this file", path, reason)


def header_problem(image):
    """Why an opened (not decoded) image cannot be used, as a short phrase, or None."""
    width, height = image.size
    if width < 1 or height < 1:
        return f"empty image ({width}x{height})"
    if width * height > MAX_PIXELS:
        return f"{width}x{height} = {width * height} pixels, more than the limit of {MAX_PIXELS}"
    mode = image.mode
    if mode in EIGHT_BIT_MODES or mode in PREMULTIPLIED or mode in SIXTEEN_BIT_MODES:
        return None
    return REFUSED_MODES.get(mode, f"pixel mode {mode!r} is not supported")


def exception_reason(exc):
    """The first line of an exception's message, or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def decode_image(path, res, channels):
    """Read one image file as uint8 (res, res, channels) by the module's rules, squashed to res x res (bilinear)."""
    try:
        with Image.open(path) as image:
            problem = header_problem(image)
            if problem:
                raise unreadable(path, problem)
            colour, alpha = _bands(image, path)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise unreadable(path, exception_reason(exc)) from None
    if alpha is not None:  # composite over black: round(c * a / 255)
        colour = ((colour.astype(np.uint32) * alpha[..., None] + 127) // 255).astype(np.uint8)
    image = Image.fromarray(colour[..., 0] if colour.shape[-1] == 1 else colour).convert(MODES[channels])
    if image.size != (res, res):
        image = image.resize((res, res), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(res, res, channels)


def _to_8bit(values):
    """round(v / 257) of 16-bit samples: the nearest of the 256 levels 0, 257, ..., 65535."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _bands(image, path):
    """(uint8 colour (H, W, 1 or 3), uint8 alpha (H, W) or None) of an opened image."""
    mode, rawmode = image.mode, _wide_rawmode(image)
    if rawmode is not None:
        return _wide_bands(image, path, rawmode)
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise unreadable(path, f"32-bit integer pixels in {values.min()}..{values.max()}, outside the "
                                   "16-bit range 0..65535 this reader scales to 8 bits")
        return _to_8bit(values)[..., None], _transparent_colour_alpha(image, values[..., None])
    if mode in PREMULTIPLIED:
        return np.asarray(image)[..., :PREMULTIPLIED[mode]], None
    target = EIGHT_BIT_MODES[mode]
    if image.info.get("transparency") is not None and target in ("L", "RGB"):
        target += "A"
    pixels = np.asarray(image.convert(target))
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if target.endswith("A"):
        return pixels[..., :-1], pixels[..., -1]
    return pixels, None


def _wide_rawmode(image):
    """The rawmode of 16-bit colour samples Pillow would cut to their high byte (e.g. 'RGB;16B'), or None.

    Only PNG ('zip') and uncompressed ('raw', e.g. TIFF) tiles, whose rawmode can be swapped for a re-read.
    """
    if not image.tile or any(tile[0] not in ("zip", "raw") for tile in image.tile):
        return None
    rawmodes = {_tile_rawmode(tile) for tile in image.tile}
    rawmode = rawmodes.pop() if len(rawmodes) == 1 else None
    return rawmode if rawmode in WIDE_RAWMODES else None


def _tile_rawmode(tile):
    args = tile[3]
    return args if isinstance(args, str) else (args[0] if args else None)


def _with_rawmode(tile, rawmode):
    name, extents, offset, args = tile
    return name, extents, offset, rawmode if isinstance(args, str) else (rawmode, *args[1:])


def _wide_bands(image, path, rawmode):
    """Colour and alpha of 16-bit colour samples, from all 16 bits of each (two decodes of the file)."""
    other_rawmode, n_colour = WIDE_RAWMODES[rawmode]
    with Image.open(path) as other:  # the same data unpacked with another rawmode (same bits per pixel)
        other.tile = [_with_rawmode(tile, other_rawmode) for tile in other.tile]
        other_bytes = np.asarray(other).astype(np.uint32)
    if rawmode == "LA;16B":  # 'RGBA' unpacks the four bytes (gray high, gray low, alpha high, alpha low)
        values = np.stack([other_bytes[..., 0] * 256 + other_bytes[..., 1],
                           other_bytes[..., 2] * 256 + other_bytes[..., 3]], axis=-1)
    else:  # Pillow's own decoding holds the high bytes, the other one the low bytes
        values = np.asarray(image).astype(np.uint32) * 256 + other_bytes
    colour = values[..., :n_colour]
    if values.shape[-1] > n_colour:
        return _to_8bit(colour), _to_8bit(values[..., n_colour])
    return _to_8bit(colour), _transparent_colour_alpha(image, colour)


def _transparent_colour_alpha(image, values):
    """uint8 alpha (H, W) from a PNG transparent colour (tRNS) given in the samples' own scale, or None."""
    colour = image.info.get("transparency")
    if colour is None:
        return None
    transparent = np.all(values == np.reshape(colour, (1, 1, -1)), axis=-1)
    return np.where(transparent, 0, 255).astype(np.uint8)
