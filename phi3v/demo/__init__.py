"""The web demo behind `python -m phi3v.app`: a predictor, the run's gallery and a small HTTP server."""
