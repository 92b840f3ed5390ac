"""The report's drawing and HTML primitives: examples as PNG thumbnails (images as images,
sequences and flat vectors as line plots), embedded as `data:` URIs, and escaped table cells."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from ..engine.datasets import Dataset

THUMB_PX = 96  # longer side of an example's thumbnail, pixels
LINE_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))

Columns = dict[str, np.ndarray]


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """[0, 1] data as is; anything else stretched to its own min..max."""
    a = np.nan_to_num(a.astype(np.float64))
    lo, hi = float(a.min()), float(a.max())
    if lo < 0.0 or hi > 1.0:
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(np.round(a * 255), 0, 255).astype(np.uint8)


def _image_png(x: np.ndarray) -> bytes:
    """A (c, h, w) example: grey for one channel, RGB for three, else its first channel."""
    from PIL import Image

    if x.shape[0] == 3:
        im = Image.fromarray(_to_uint8(x.transpose(1, 2, 0)), "RGB")
    else:
        im = Image.fromarray(_to_uint8(x[0]), "L")
    scale = max(1, THUMB_PX // max(im.size))
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _line_png(x: np.ndarray, width: int = 2 * THUMB_PX, height: int = THUMB_PX) -> bytes:
    """A sequence (L,) / (c, L) or a flat vector (d,) as a line plot, one line per channel.
    Drawn at 2x and downsampled, which antialiases the lines."""
    from PIL import Image, ImageDraw

    rows = np.nan_to_num(np.atleast_2d(x.reshape(x.shape[0], -1) if x.ndim > 1 else x).astype(np.float64))
    W, H, pad = 2 * width, 2 * height, 8
    im = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(im)
    lo, hi = float(rows.min()), float(rows.max())
    span = hi - lo if hi > lo else 1.0

    def y_of(v):
        return H - pad - (v - lo) / span * (H - 2 * pad)

    if lo < 0.0 < hi:
        draw.line([(0, y_of(0.0)), (W, y_of(0.0))], fill=(210, 210, 210), width=2)
    L = rows.shape[1]
    xs = np.linspace(pad, W - pad, L) if L > 1 else np.array([W / 2])
    for c, row in enumerate(rows[: len(LINE_COLOURS)]):
        pts = [(float(a), float(y_of(v))) for a, v in zip(xs, row)]
        if len(pts) > 1:
            draw.line(pts, fill=LINE_COLOURS[c], width=3)
        else:
            draw.ellipse([pts[0][0] - 3, pts[0][1] - 3, pts[0][0] + 3, pts[0][1] + 3], fill=LINE_COLOURS[c])
    draw.rectangle([0, 0, W - 1, H - 1], outline=(200, 200, 200), width=2)
    im = im.resize((width, height), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def example_png(ds: Dataset, x: np.ndarray) -> bytes:
    """One example as a picture fitting its kind."""
    if ds.kind == "image" and x.ndim == 3:
        return _image_png(x)
    return _line_png(x)


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        return "NaN" if not np.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _class_name(ds: Dataset | None, c: int) -> str:
    if ds is not None and ds.class_names and 0 <= c < len(ds.class_names):
        return ds.class_names[c]
    return str(c)


def _label_text(scores: Columns, ds: Dataset | None, i: int) -> str:
    y = int(scores["label"][i])
    text = f"label {_esc(_class_name(ds, y))}"
    flipped = scores.get("label_flipped")
    if flipped is not None and bool(flipped[i]):
        was = ds.extras.get("clean_y_train") if ds is not None else None
        text += f" <b>(flipped{'; was ' + _esc(_class_name(ds, int(was[i]))) if was is not None else ''})</b>"
    return text


def _example_figure(uri: str, caption: str, css: str = "") -> str:
    return f'<figure class="example {css}"><img src="{uri}" alt=""><figcaption>{caption}</figcaption></figure>'


def _table(header: list[str], rows: list[list], raw: bool = False, css: str = "", numeric: bool = True) -> str:
    """An HTML table; `raw` cells are HTML already; `numeric` right-aligns cells that are numbers."""

    def cell(v):
        num = numeric and (
            isinstance(v, (int, float, np.integer, np.floating))
            or (isinstance(v, str) and v.replace(".", "", 1).lstrip("-").isdigit())
        )
        return f"<td{' class=num' if num else ''}>{v if raw else _esc(v)}</td>"

    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
