"""What a finished run ships, apart from how it trained: the adapter export and its checks, merges and
copies (adapter.py, behind `python -m phi3v.export`), the base snapshot's loader files of a merged export
(snapshot_files.py) and the W&B artifacts of a run (artifacts.py). Nothing here imports phi3v.training."""
