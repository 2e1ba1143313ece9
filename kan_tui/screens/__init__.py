"""The app's screens: setup (presets and the LR strategy form), dashboard (a live run), dialogs."""
