"""Shared by every test folder: pytest puts this directory on sys.path for it, so the
helper modules beside it (xdp_run, rootonly) import by name, as each folder's own helpers do."""
