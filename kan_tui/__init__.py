"""kan_tui: the `kan-tui` command, its headless reporter and the Textual app.

Kept empty on purpose: `import kan_tui.cli` must not pull in torch or textual (see kan_tui/cli/).
"""
