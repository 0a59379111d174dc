"""Image files -> uint8 pixels: the header check, the pixel-mode rules, 16-bit scaling and the size limit.

`header_problem` needs only what `PIL.Image.open` reads lazily (format, size, mode); `decode_image`
applies the same check, then decodes. The rules:
* at least 1 x 1 and at most MAX_PIXELS pixels (width x height);
* 8-bit modes: 'L' and 'RGB' as stored; '1' -> 0 / 255; 'P' -> its palette colours; 'CMYK' -> RGB by
  (255 - C) (255 - K) / 255 (ICC profiles are not applied); 'YCbCr' -> RGB; 'RGBX' -> RGB;
* 16-bit samples -> round(v / 257), the nearest 8-bit level: 'I;16' / 'I;16B' / 'I;16L' / 'I;16N',
  16-bit PNG RGB, RGBA and gray + alpha (read in full: Pillow alone keeps their high byte), and 'I'
  (32-bit integers) read as 16-bit samples: an 'I' value outside 0..65535 is refused, never clipped;
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
# 16-bit PNG colour: Pillow's rawmode -> (rawmode reading the rest of each sample, colour bands)
WIDE_PNG = {"RGB;16B": ("RGB;16L", 3), "RGBA;16B": ("RGBA;16L", 3), "LA;16B": ("RGBA", 1)}
REFUSED_MODES = {"F": "32-bit float pixels (mode 'F') have no defined 8-bit scale; save it as 8- or 16-bit",
                 "LAB": "CIELab pixels (mode 'LAB') are not converted; save it as RGB"}


class UnreadableImageError(UserError):
    """A data file that cannot be decoded; `path` and `reason` (a short phrase) when raised by `unreadable`."""

    def __init__(self, message, path=None, reason=None):
        super().__init__(message)  # one positional argument, as torch's DataLoader re-raises worker errors
        self.path = path
        self.reason = reason


def unreadable(path, reason, what="image"):
    """The UnreadableImageError of the file at `path` ('what' names its kind)."""
    return UnreadableImageError(f"{path}: not a readable {what} ({reason}); remove or replace this file", path, reason)


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
    gray = colour.shape[-1] == 1
    image = Image.fromarray(colour[..., 0] if gray else colour, "L" if gray else "RGB").convert(MODES[channels])
    if image.size != (res, res):
        image = image.resize((res, res), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(res, res, channels)


def _to_8bit(values):
    """round(v / 257) of 16-bit samples: the nearest of the 256 levels 0, 257, ..., 65535."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _bands(image, path):
    """(uint8 colour (H, W, 1 or 3), uint8 alpha (H, W) or None) of an opened image."""
    mode, rawmode = image.mode, _png_rawmode(image)
    if rawmode in WIDE_PNG:
        return _wide_png_bands(image, path, rawmode)
    if mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise unreadable(path, f"32-bit integer pixels in {values.min()}..{values.max()}, outside "
                                             "the 16-bit range 0..65535 this reader scales to 8 bits")
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


def _png_rawmode(image):
    """The rawmode of a PNG's pixel data (e.g. 'RGB;16B'), or None for other formats."""
    if image.format != "PNG" or len(image.tile) != 1 or not isinstance(image.tile[0][3], str):
        return None
    return image.tile[0][3]


def _wide_png_bands(image, path, rawmode):
    """Colour and alpha of a 16-bit PNG with colour or alpha, from all 16 bits of each sample."""
    rest_rawmode, n_colour = WIDE_PNG[rawmode]
    with Image.open(path) as rest:  # the same data unpacked with another rawmode (same bits per pixel)
        rest.tile = [(name, extents, offset, rest_rawmode) for name, extents, offset, _ in rest.tile]
        rest_bytes = np.asarray(rest).astype(np.uint32)
    if rawmode == "LA;16B":  # 'RGBA' unpacks the four bytes (gray high, gray low, alpha high, alpha low)
        values = np.stack([rest_bytes[..., 0] * 256 + rest_bytes[..., 1],
                           rest_bytes[..., 2] * 256 + rest_bytes[..., 3]], axis=-1)
    else:  # Pillow's own decoding holds the high bytes, `rest` the low ones
        values = np.asarray(image).astype(np.uint32) * 256 + rest_bytes
    colour, alpha = values[..., :n_colour], values[..., n_colour] if values.shape[-1] > n_colour else None
    if alpha is None:
        alpha = _transparent_colour_alpha(image, colour)
    else:
        alpha = _to_8bit(alpha)
    return _to_8bit(colour), alpha


def _transparent_colour_alpha(image, values):
    """uint8 alpha (H, W) from a PNG transparent colour (tRNS) given in the samples' own scale, or None."""
    colour = image.info.get("transparency")
    if colour is None:
        return None
    transparent = np.all(values == np.reshape(colour, (1, 1, -1)), axis=-1)
    return np.where(transparent, 0, 255).astype(np.uint8)
