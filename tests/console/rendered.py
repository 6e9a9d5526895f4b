"""What a Textual app shows, read through its public screenshot export (no private compositor).

`App.export_screenshot()` is the SVG that snapshot tests compare; each run of text in it carries
its cell position, so the screen's lines can be rebuilt as plain strings.
"""

from __future__ import annotations

import html
import re

from rich.cells import cell_len
from textual.app import App

_TEXT = re.compile(r'<text [^>]*?x="([\d.]+)" y="([\d.]+)" textLength="[\d.]+"[^>]*>(.*?)</text>')
# Rich's SVG layout (rich.console.Console.export_svg): a cell is 20 * 0.61 wide, a line 20 * 1.22
# high, and a line's text sits on a baseline 20 below its top.
_CHAR_HEIGHT = 20
_CELL_WIDTH = _CHAR_HEIGHT * 0.61
_LINE_HEIGHT = _CHAR_HEIGHT * 1.22


def screen_lines(app: App) -> list[str]:
    """The current screen, one string per terminal line, trailing blanks removed."""
    width, height = app.size
    grid = [[" "] * width for _ in range(height)]
    for x, y, text in _TEXT.findall(app.export_screenshot()):
        row = round((float(y) - _CHAR_HEIGHT) / _LINE_HEIGHT)
        col = round(float(x) / _CELL_WIDTH)
        for char in html.unescape(text).replace("\xa0", " "):  # Rich writes spaces as &#160;
            cells = cell_len(char)
            if 0 <= row < height and 0 <= col + cells - 1 < width:
                grid[row][col] = char
                for covered in range(col + 1, col + cells):
                    grid[row][covered] = ""  # the wide character's second cell
            col += cells
    return ["".join(row).rstrip() for row in grid]


def screen_text(app: App) -> str:
    return "\n".join(screen_lines(app))
