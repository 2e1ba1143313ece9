"""Built-in presets (TOML), installed as kan_engine.presets."""
