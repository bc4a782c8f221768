"""poller: a daemon that watches long-running batch jobs on remote APIs and notifies."""

__version__ = "0.1.0"
