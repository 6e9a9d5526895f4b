"""Reusable Textual widgets fed plain data; nothing here imports the engine."""

from widgets.panels import (
    AlertList,
    AlertRow,
    BarList,
    BarRow,
    Figure,
    FigureStrip,
    GaugeList,
    GaugeRow,
    level_of,
)
from widgets.virtual_table import Column, VirtualTable

__all__ = [
    "AlertList",
    "AlertRow",
    "BarList",
    "BarRow",
    "Column",
    "Figure",
    "FigureStrip",
    "GaugeList",
    "GaugeRow",
    "VirtualTable",
    "level_of",
]
