"""Widgets of the app: config form, preset list, plotext charts, stats panel, warnings list."""
