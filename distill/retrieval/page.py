"""The results page of `python -m distill.search ... --html FILE`: each hit with its rank, score, file (its
path below the folder that was indexed, not the machine's absolute path) and time span, and a strip of the
frames the model sampled from it, in one HTML file that needs nothing else (the pictures are inline JPEGs),
to open in a browser or attach to a message."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from distill.data.video import DEFAULT_BACKEND, VideoError, load_segments
from students.model import Preprocessing

HEIGHT = 96  # thumbnail height in pixels

STYLE = f"""
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
h1 {{ font-size: 1.3em; }} .query {{ color: #555; }}
.hit {{ margin: 1.2em 0; padding-bottom: 1em; border-bottom: 1px solid #ddd; }}
.meta {{ margin-bottom: .4em; }} .rank {{ font-weight: bold; margin-right: .6em; }}
.score {{ font-family: monospace; margin-right: .6em; }} .span {{ color: #555; margin-left: .6em; }}
.strip img {{ height: {HEIGHT}px; margin-right: 3px; border-radius: 3px; }} .error {{ color: #b00; }}
"""


def frame_strip(hit: dict, segment: int | None, preprocessing: Preprocessing) -> list[str]:
    """The frames the index's model sampled from a hit's segment, as the model saw them (the centre square)
    at HEIGHT pixels, as JPEG data URIs."""
    spans, frames, _ = load_segments(
        hit["path"],
        segment,
        max_frames=preprocessing.max_frames,
        framerate=preprocessing.framerate,
        slice_framepos=preprocessing.slice_framepos,
        size=HEIGHT,  # resized as decoded: a long video's segments never whole in memory
        backend=DEFAULT_BACKEND,
    )
    nearest = min(range(len(spans)), key=lambda i: abs(spans[i][0] - hit["start"]))
    uris = []
    for frame in frames[nearest].permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=85)
        uris.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode())
    return uris


def shown_path(path: Path, root: str | None) -> str:
    """`path` below `root` (the folder an index was built from), or as it is when it lies elsewhere or the
    index predates the record of its folder."""
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return str(path)


def write_page(file: Path, query: str, hits: list[dict], infos: dict[Path, dict]) -> None:
    """Writes the page of `hits` for `query`, as `distill.retrieval.search.search` returns them with the `index.json`
    of each index searched (its segment length and preprocessing say which frames its model read)."""
    infos = {str(folder): info for folder, info in infos.items()}
    rows = []
    for hit in hits:
        info = infos[hit["index"]]
        try:
            uris = frame_strip(hit, info["segment"], Preprocessing.read(info["preprocessing"]))
            strip = "".join(f'<img src="{uri}" alt="">' for uri in uris)
        except VideoError as error:
            strip = f'<span class="error">{html.escape(str(error))}</span>'
        path = Path(hit["path"])
        rows.append(
            f'<div class="hit"><div class="meta"><span class="rank">{hit["rank"]}</span>'
            f'<span class="score">{hit["score"]:.4f}</span>'
            f'<a href="{html.escape(path.resolve().as_uri())}">{html.escape(shown_path(path, info.get("videos")))}</a>'
            f'<span class="span">{hit["start"]:.1f}–{hit["end"]:.1f} s</span></div>'
            f'<div class="strip">{strip}</div></div>'
        )
    file.write_text(
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>search: '
        f"{html.escape(query)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{len(hits)} best matches</h1><p class="query">{html.escape(query)}</p>'
        + "".join(rows)
        + "</body></html>\n"
    )
