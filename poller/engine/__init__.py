"""The daemon's moving parts: the runtime the engines share (`runtime`: the database thread,
the config in force, the tuning and the loop each engine runs), the polling engine, the
delivery engine, discovery and the periodic duties on APScheduler (`scheduling`).

The engines do the I/O around the pure rules of `poller.rules`; `poller.app` builds them.
"""
