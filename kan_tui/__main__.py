"""`python -m kan_tui` runs the CLI (so `torchrun -m kan_tui run --headless ...` works too)."""

from kan_tui.launch import main

main()
