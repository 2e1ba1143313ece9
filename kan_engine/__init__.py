"""kan_engine: train Kolmogorov-Arnold Networks fast. No UI imports here."""
